import pytest
import torch

from fastsam3d.checkpoints import read_checkpoint
from fastsam3d.errors import CheckpointError
from fastsam3d.registry import MODEL_CONFIGS, build_model, load_model, save_model


def test_safetensors_round_trip(tmp_path):
    model = build_model("tiny-student")
    path = save_model(model, tmp_path / "sub" / "model.safetensors")
    loaded = load_model(path)
    assert loaded.config == model.config
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    assert not list((tmp_path / "sub").glob(".*tmp"))


def test_half_precision_safetensors_is_smaller_and_close(tmp_path):
    model = build_model("tiny-teacher")
    full = save_model(model, tmp_path / "full.safetensors")
    half = save_model(model, tmp_path / "half.safetensors", half=True)
    assert half.stat().st_size < 0.6 * full.stat().st_size
    loaded = load_model(half)
    assert loaded.state_dict()["image_encoder.blocks.0.attn.qkv.weight"].dtype == torch.float32
    assert torch.allclose(
        loaded.state_dict()["mask_decoder.iou_token.weight"],
        model.state_dict()["mask_decoder.iou_token.weight"],
        atol=1e-2,
    )


def test_missing_and_unknown():
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_model("does-not-exist.pth")
    with pytest.raises(CheckpointError, match="unknown model"):
        load_model("no-such-model")
    with pytest.raises(
        CheckpointError, match=r"unknown model 'no-such-model'.*litemedsam.*medsam.*sam-med2d.*sam-vit-b"
    ):
        load_model("no-such-model")
    with pytest.raises(CheckpointError, match="not downloaded and HF_HUB_OFFLINE is set"):  # conftest: offline
        load_model("sam-med3d-turbo")
    with pytest.raises(CheckpointError, match="no weights ship"):
        load_model("sam-med3d")


def test_registry_holds_official_configs():
    student = MODEL_CONFIGS["fastsam3d"]
    assert (student.depth, student.num_heads, student.skip_layer, student.embed_dim) == (6, 6, 2, 768)
    teacher = MODEL_CONFIGS["sam-med3d-turbo"]
    assert (teacher.depth, teacher.window_size, teacher.global_attn_indexes) == (12, 14, (2, 5, 8, 11))


def test_one_registry_for_2d_and_3d_models_without_the_test_only_configs():
    from fastsam3d.modeling import Sam2D, Sam3D
    from fastsam3d.registry import all_model_names, listed_configs, spatial_dims, weights_status

    names = all_model_names()
    assert {"fastsam3d", "sam-med3d-turbo", "default", "litemedsam", "sam-vit-b"} <= set(names)
    assert not [n for n in names if n.startswith("tiny-")] and "tiny-student" in MODEL_CONFIGS  # built by tests only
    assert [c.spatial_dims for c in listed_configs()][-4:] == [2, 2, 2, 2]
    assert (spatial_dims("litemedsam"), spatial_dims("fastsam3d"), spatial_dims("model.pth")) == (2, 3, 3)
    assert isinstance(build_model("sam-med2d"), Sam2D) and isinstance(build_model("tiny-student"), Sam3D)
    assert build_model("sam-med2d").config is MODEL_CONFIGS["sam-med2d"]
    assert weights_status("default") == "shipped" and weights_status("compact") == "--checkpoint"
    with pytest.raises(CheckpointError, match="fastsam3d saves 3D models only"):
        save_model(build_model("litemedsam"), "never-written.safetensors")


def test_loaded_weights_are_the_files_and_then_independent_of_it(tmp_path):
    """The model is given the checkpoint's tensors (not initialised, then overwritten), and holds them
    in memory: rewriting the file in place afterwards changes nothing."""
    model, other = build_model("tiny-student"), build_model("tiny-student")
    path = save_model(model, tmp_path / "model.safetensors")
    loaded, state = load_model(path), read_checkpoint(path)[0]
    replacement = save_model(other, tmp_path / "other.safetensors").read_bytes()
    assert len(replacement) == path.stat().st_size
    with open(path, "r+b") as handle:  # same size and layout, other weights: a mapped model would change
        handle.write(replacement)
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
        assert torch.equal(state[key], value), key


def test_a_loaded_model_trains(tmp_path):
    path = save_model(build_model("tiny-student"), tmp_path / "model.safetensors")
    model = load_model(path).train()
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    assert all(p.requires_grad and p.is_leaf and p.is_contiguous() for p in model.parameters())
    optimiser = torch.optim.SGD(model.parameters(), lr=0.1)
    crop = torch.randn(1, 1, *(model.img_size,) * 3)
    for _ in range(2):
        optimiser.zero_grad()
        masks, _ = model.decode(model.encode(crop), torch.tensor([[[32.0, 30, 33]]]), torch.tensor([[1]]))
        masks.sigmoid().mean().backward()
        optimiser.step()
    changed = [k for k, v in model.named_parameters() if not torch.equal(before[k], v)]
    assert any(k.startswith("image_encoder.blocks.") for k in changed) and any(
        k.startswith("mask_decoder.") for k in changed
    )


def test_state_outside_the_state_dict_survives_loading(tmp_path):
    """TinyViT's attention-bias indices are a non-persistent buffer, computed when the model is built."""
    built = build_model("litemedsam")
    path = tmp_path / "lite.pth"
    torch.save(built.state_dict(), path)
    loaded = load_model("litemedsam", checkpoint=path)
    indices = {k: v for k, v in built.named_buffers() if k.endswith("attention_bias_idxs")}
    assert indices
    for key, value in loaded.named_buffers():
        if key in indices:
            assert torch.equal(value, indices[key]), key


def test_one_tensor_under_several_keys_gives_separate_parameters(tmp_path):
    state = build_model("tiny-student").state_dict()
    first, second = "image_encoder.neck.1.bias", "image_encoder.neck.3.bias"
    state[first] = state[second] = torch.zeros_like(state[first])  # saved once, under two keys
    torch.save(state, tmp_path / "tied.pth")
    loaded = load_model(tmp_path / "tied.pth")
    with torch.no_grad():
        loaded.image_encoder.neck[1].bias.add_(1.0)
    assert not loaded.image_encoder.neck[3].bias.any()
