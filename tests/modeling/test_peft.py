"""Hyper-adapter, LoRA and bottleneck adapters on the 3D SAM encoder."""

from __future__ import annotations

import copy

import pytest
import torch

from fastsam3d.modeling.peft import (
    AdaptedLinear,
    apply_peft,
    load_peft_state_dict,
    merge_peft,
    parameter_counts,
    peft_state_dict,
)
from fastsam3d.registry import build_model


def tiny():
    torch.manual_seed(0)
    return build_model("tiny-student").eval()


def outputs(model, crop):
    with torch.no_grad():
        embedding = model.encode(crop)
        logits, _ = model.decode(embedding, torch.tensor([[[30.0, 30.0, 30.0]]]), torch.tensor([[1]]))
    return embedding, logits


@pytest.mark.parametrize("method", ["lora", "adapter", "hyper"])
def test_adapted_model_starts_equal_to_the_frozen_one_and_only_adapters_train(method):
    frozen = tiny()
    model = apply_peft(copy.deepcopy(frozen), method, rank=4, adapter_dim=8)
    crop = torch.randn(1, 1, 64, 64, 64)
    for a, b in zip(outputs(model, crop), outputs(frozen, crop), strict=True):
        torch.testing.assert_close(a, b)
    embedding = model.encode(crop)
    logits, _ = model.decode(embedding, torch.tensor([[[30.0, 30.0, 30.0]]]), torch.tensor([[1]]))
    logits.square().mean().backward()
    for name, parameter in model.named_parameters():
        adapter = any(key in name for key in ("factors", "hyper_adapter", "adapter"))
        trains = not name.startswith("image_encoder.") or adapter
        assert parameter.requires_grad == trains, name
        if name.startswith("image_encoder.") and not adapter:
            assert parameter.grad is None, name
    grads = [
        p.grad for n, p in model.named_parameters() if "hyper_adapter.heads" in n or "lora_b" in n or "adapter.up" in n
    ]
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads)  # the zero-initialised parts learn


def test_hyper_adapter_shapes_and_size_does_not_grow_with_depth():
    model = apply_peft(tiny(), "hyper", rank=4, basis=3)
    attention_layers = [b.attn for b in model.image_encoder.blocks if hasattr(b, "attn")]
    a, b = attention_layers[0].qkv.factors()
    dim = attention_layers[0].qkv.base.in_features
    assert a.shape == (4, dim) and b.shape == (3 * dim, 4)
    assert attention_layers[-1].proj.factors()[1].shape == (dim, 4)
    hyper = sum(p.numel() for p in model.image_encoder.hyper_adapter.parameters())
    per_layer = model.image_encoder.hyper_adapter.embeddings[0].numel()
    assert hyper - per_layer * len(attention_layers) == sum(
        p.numel() for n, p in model.image_encoder.hyper_adapter.named_parameters() if n != "embeddings"
    )
    lora = apply_peft(tiny(), "lora", rank=4)
    assert sum(isinstance(m, AdaptedLinear) for m in lora.modules()) == 2 * len(attention_layers)


@pytest.mark.parametrize("method", ["lora", "hyper", "adapter"])
def test_adapters_save_load_and_merge_exactly(method, tmp_path):
    model = apply_peft(tiny(), method, rank=4, adapter_dim=8)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.requires_grad:
                parameter.add_(0.05 * torch.randn_like(parameter))  # as if trained
    crop = torch.randn(1, 1, 64, 64, 64)
    expected = outputs(model, crop)
    state = peft_state_dict(model)
    trainable, total = parameter_counts(model)
    assert sum(v.numel() for v in state.values()) == trainable < total
    torch.save(state, tmp_path / "adapter.pt")
    fresh = apply_peft(tiny(), method, rank=4, adapter_dim=8)
    load_peft_state_dict(fresh, torch.load(tmp_path / "adapter.pt", weights_only=True))
    for a, b in zip(outputs(fresh, crop), expected, strict=True):
        torch.testing.assert_close(a, b)
    merged = merge_peft(fresh)
    assert not any(isinstance(m, AdaptedLinear) for m in merged.modules())
    for a, b in zip(outputs(merged, crop), expected, strict=True):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    if method != "adapter":  # low-rank updates fold into the original keys: a plain model loads them
        plain = tiny()
        plain.load_state_dict(merged.state_dict())
        torch.testing.assert_close(outputs(plain, crop)[0], expected[0], atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="does not fit"):
        load_peft_state_dict(apply_peft(tiny(), "lora", rank=2), state if method != "lora" else {})
