import pytest
import torch

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
