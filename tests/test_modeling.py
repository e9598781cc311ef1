import json

import pytest
import torch

from fastsam3d.modeling.attention import Attention3D, reference_rel_pos_bias
from fastsam3d.reference_check import check_fixture, main as reference_check_main
from fastsam3d.registry import build_model


def _randomise(module: torch.nn.Module, seed: int = 1) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.3)


@pytest.mark.parametrize("fixture", ["ref_small.pt", "ref_small_student.pt"])
def test_reference_fixture_reproduced(reference_dir, fixture):
    report = check_fixture(reference_dir / fixture)
    for variant, errors in report.items():
        assert len(errors) >= 13, f"{variant}: too few outputs compared ({sorted(errors)})"
        worst = max(errors.items(), key=lambda item: item[1])
        assert worst[1] <= 1e-4, f"{variant}: {worst[0]} differs by {worst[1]:.2e}"


def test_block_styles_differ_on_teacher_fixture(reference_dir):
    """The two residual forms give different outputs on the same weights (REFERENCE fact 2)."""
    report = check_fixture(reference_dir / "ref_small.pt")
    assert set(report) == {"reference", "fastsam3d_block_variant"}


def test_reference_check_cli_exit_codes(reference_dir, capsys):
    assert reference_check_main([str(reference_dir / "ref_small.pt"), "--tolerance", "1e-4"]) == 0
    assert "max abs error" in capsys.readouterr().out
    assert reference_check_main([str(reference_dir / "ref_small.pt"), "--tolerance", "1e-12"]) == 1


@pytest.mark.parametrize("name,keys_file", [("sam-med3d", "ref_keys_teacher.json"), ("fastsam3d", "ref_keys_student.json")])
def test_full_size_keys_and_shapes(reference_dir, name, keys_file):
    expected = json.loads((reference_dir / keys_file).read_text())
    with torch.device("meta"):
        state = build_model(name).state_dict()
    assert list(state) == list(expected)
    assert {k: list(v.shape) for k, v in state.items()} == expected


def test_rel_pos_bias_is_the_reference_form_not_the_textbook_one():
    size, channels = 4, 5
    q = torch.randn(1, size, size, size, channels)
    tables = [torch.randn(2 * size - 1, channels) for _ in range(3)]
    bias = reference_rel_pos_bias(q, *tables).view(size, size, size, size, size, size)
    qd, qh, qw, kd, kh, kw = 1, 2, 3, 0, 3, 1
    r = lambda t, delta: tables[t][delta + size - 1]  # noqa: E731
    expected = q[0, qd, qh, qw] @ r(0, qd - kw) + q[0, qd, qh, kd] @ r(1, qh - kw) + q[0, qd, qh, kh] @ r(2, kh - kw)
    textbook = q[0, qd, qh, qw] @ (r(0, qd - kd) + r(1, qh - kh) + r(2, qw - kw))
    assert torch.allclose(bias[qd, qh, qw, kd, kh, kw], expected, atol=1e-5)
    assert not torch.allclose(bias[qd, qh, qw, kd, kh, kw], textbook, atol=1e-3)


@pytest.mark.parametrize("use_rel_pos", [True, False])
def test_padded_window_shortcut_matches_literal_padding(use_rel_pos):
    attention = Attention3D(48, 4, use_rel_pos=use_rel_pos, rel_pos_size=14, window_size=14)
    _randomise(attention)
    x = torch.randn(2, 8, 8, 8, 48)
    fast = attention(x)
    attention.exact_padding = True
    literal = attention(x)
    assert fast.shape == literal.shape == x.shape
    assert torch.allclose(fast, literal, atol=1e-4, rtol=1e-4), (fast - literal).abs().max()


def test_window_partition_without_padding_runs_per_window():
    """A grid larger than the window is split into windows (no cross-window attention)."""
    attention = Attention3D(16, 2, rel_pos_size=4, window_size=4)
    _randomise(attention)
    x = torch.randn(1, 8, 8, 8, 16)
    base = attention(x)
    changed = x.clone()
    changed[:, 4:, 4:, 4:] += 1.0  # touch only the last window
    out = attention(changed)
    assert torch.allclose(base[:, :4, :4, :4], out[:, :4, :4, :4], atol=1e-6)
    assert not torch.allclose(base[:, 4:, 4:, 4:], out[:, 4:, 4:, 4:], atol=1e-3)


def test_dilated_attention_equals_masked_global_attention():
    """Dilated attention = global attention restricted to tokens congruent modulo r, in place."""
    attention = Attention3D(32, 2, rel_pos_size=8, mode="dilated", dilation=2)
    _randomise(attention)
    x = torch.randn(1, 8, 8, 8, 32)
    out = attention(x)
    q, k, v = attention._split_heads(x)
    bias = attention._bias(q, (8, 8, 8))
    coords = torch.stack(torch.meshgrid(*[torch.arange(8)] * 3, indexing="ij"), -1).reshape(-1, 3) % 2
    same_group = (coords[:, None, :] == coords[None, :, :]).all(-1)
    masked = bias.masked_fill(~same_group, float("-inf"))
    expected = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=masked, scale=attention.scale)
    expected = attention.proj(attention._merge_heads(expected, (8, 8, 8)))
    assert torch.allclose(out, expected, atol=1e-5)


def test_shapes_and_intermediate_features():
    model = build_model("tiny-student")
    image = torch.randn(2, 1, 64, 64, 64)
    with torch.no_grad():
        embedding, features = model.image_encoder(image, return_intermediates=True)
        masks, iou = model.decode(
            embedding, torch.tensor([[[10, 20, 30]], [[40, 5, 6]]]), torch.tensor([[1], [0]]), multimask_output=True
        )
    assert embedding.shape == (2, 96, 8, 8, 8) and embedding.dtype == torch.float32
    assert [tuple(f.shape) for f in features] == [(2, 8, 8, 8, 96)] * 3 + [(2, 96, 8, 8, 8)]
    assert masks.shape == (2, 3, 32, 32, 32) and iou.shape == (2, 3)
    assert model.upsample(masks[:, :1]).shape == (2, 1, 64, 64, 64)


def test_encoder_rejects_wrong_crop_size():
    model = build_model("tiny-teacher")
    with pytest.raises(ValueError, match="expects a"):
        model.encode(torch.zeros(1, 1, 32, 32, 32))


def test_learned_box_prompt_adds_two_tokens():
    from dataclasses import replace

    from fastsam3d.registry import get_config

    model = build_model(replace(get_config("tiny-student"), box_embeddings=True))
    sparse, _ = model.prompt_encoder(
        (torch.tensor([[[1.0, 2.0, 3.0]]]), torch.tensor([[1]])), torch.tensor([[0.0, 0, 0, 10, 10, 10]]), None
    )
    assert sparse.shape == (1, 3, 96)  # one click + two corners, no padding point


def test_patch_expand_equals_conv_transpose():
    from fastsam3d.modeling.common import PatchExpand3d

    layer = PatchExpand3d(12, 5)
    _randomise(layer)
    x = torch.randn(2, 12, 3, 4, 5)
    expected = torch.nn.functional.conv_transpose3d(x, layer.weight, layer.bias, stride=2)
    assert torch.allclose(layer(x), expected, atol=1e-5)
