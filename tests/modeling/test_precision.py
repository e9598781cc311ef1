"""Lower-precision inference (fastsam3d.modeling.precision): int8 / bf16 close to fp32, and the
option's plumbing through load_model, Session, the CLI and the server settings."""

import copy

import numpy as np
import pytest
import torch
from torch import nn

from fastsam3d.checkpoints import load_state_dict_strict
from fastsam3d.cli import main
from fastsam3d.clicks import dice
from fastsam3d.engine.session3d import Session
from fastsam3d.errors import CheckpointError
from fastsam3d.modeling.precision import Int8Conv, Int8Linear, apply_precision
from fastsam3d.reference import config_from_reference
from fastsam3d.registry import build_model, load_model, save_model
from fastsam3d.runtime import apply_model_precision, default_precision

from ..helpers import sphere_volume

GATE_CORRELATION = 0.999  # random weights: logits of the fast path against fp32 (issue 15)
GATE_DICE = 0.98  # masks at the same prompts


def correlation(a: torch.Tensor, b: torch.Tensor) -> float:
    return torch.corrcoef(torch.stack([a.flatten().double(), b.flatten().double()]))[0, 1].item()


@pytest.mark.parametrize("per_token,outlier,gate", [(False, 1.0, 0.9995), (True, 20.0, 0.9999)])
def test_int8_linear_is_close_to_the_linear_on_any_leading_shape(per_token, outlier, gate):
    linear = nn.Linear(96, 200)
    x = torch.randn(2, 4, 4, 4, 96)
    x[0, 0, 0, 0] *= (
        outlier  # an outlier token coarsens the shared activation scale (0.975 at 20x); per-token scaling does not
    )
    quantised = Int8Linear.from_linear(linear, per_token=per_token)
    with torch.inference_mode():
        expected, got = linear(x), quantised(x)
    assert got.shape == expected.shape and got.dtype == torch.float32
    assert correlation(got[1], expected[1]) > gate
    assert torch.equal(quantised.bias, linear.bias.detach())
    assert (quantised.weight - linear.weight).abs().max() <= linear.weight.abs().max() / 127


@pytest.mark.parametrize(
    "conv", [nn.Conv3d(1, 48, 8, stride=8), nn.Conv3d(16, 24, 3, padding=1, bias=False), nn.Conv2d(3, 8, 1)]
)
def test_int8_conv_is_close_to_the_convolution(conv):
    x = torch.randn(1, conv.in_channels, *(16,) * (conv.weight.dim() - 2))
    with torch.inference_mode():
        expected, got = conv(x), Int8Conv(conv)(x)
    assert got.shape == expected.shape
    assert correlation(got, expected) > 0.9995


def test_apply_precision_replaces_linears_and_patch_convs_only():
    model = nn.Sequential(
        nn.Conv3d(1, 8, 4, stride=4), nn.Conv3d(8, 8, 3, padding=1), nn.Flatten(), nn.Linear(8 * 8, 4)
    )
    apply_precision(model, "int8")
    assert [type(m) for m in model] == [Int8Conv, nn.Conv3d, nn.Flatten, Int8Linear]
    assert model(torch.randn(1, 1, 8, 8, 8)).shape == (1, 4)
    with pytest.raises(ValueError, match="unknown precision 'fp16'"):
        apply_precision(nn.Linear(2, 2), "fp16")


def _fixture_model(reference_dir, name: str):
    fixture = torch.load(reference_dir / name, map_location="cpu", weights_only=True)
    style = "fastsam3d" if fixture["config"]["image_encoder"].get("skip_layer", 0) else "prenorm"
    model = build_model(config_from_reference(fixture["config"], style))
    load_state_dict_strict(model, fixture["state_dict"], name)
    return model, fixture["inputs"]


@pytest.mark.parametrize(
    "fixture,precision", [("ref_small.pt", "int8"), ("ref_small_student.pt", "int8"), ("ref_small_student.pt", "bf16")]
)
def test_fast_paths_keep_the_fixture_logits(reference_dir, fixture, precision):
    """Random-weight teacher (padded windows) and student: logits correlation >= 0.999 at the same prompts."""
    model, inputs = _fixture_model(reference_dir, fixture)
    fast = apply_model_precision(copy.deepcopy(model), precision)
    assert fast.precision == precision
    with torch.inference_mode():
        for m in (model, fast):
            embedding = m.encode(inputs["image"])
            assert embedding.dtype == torch.float32
            logits, _ = m.decode(
                embedding, inputs["A_point_coords"], inputs["A_point_labels"], mask_input=inputs["A_mask_input"]
            )
            m.logits = logits
    assert correlation(fast.logits, model.logits) >= GATE_CORRELATION
    agree = dice((fast.logits > 0).numpy(), (model.logits > 0).numpy())
    assert agree >= GATE_DICE


def test_session_logits_agree_between_fp32_and_int8(tmp_path):
    """Random weights: the first click's logits (correlation) and mask (Dice) through the whole engine."""
    torch.manual_seed(3)
    path = save_model(build_model("tiny-student"), tmp_path / "tiny.safetensors")
    volume, _ = sphere_volume()
    logits, masks = {}, {}
    for precision in ("fp32", "int8"):
        session = Session(str(path), precision=precision, device="cpu", max_rois=1)
        assert session.precision == precision
        session.set_image(volume)
        session.add_click(np.array(volume.shape) // 2)
        logits[precision] = session.objects[session.active].state.logits[0][1].float()
        masks[precision] = session.mask()
    assert correlation(logits["int8"], logits["fp32"]) >= GATE_CORRELATION
    assert masks["fp32"].any() and dice(masks["int8"], masks["fp32"]) >= GATE_DICE


def test_auto_picks_int8_for_wide_3d_sams_on_cpu_and_fp32_otherwise(tmp_path, monkeypatch):
    import fastsam3d.runtime as runtime

    def sam_of_width(width: int) -> nn.Module:
        model = nn.Module()
        model.image_encoder = nn.Sequential(nn.Linear(width, 8))
        return model

    assert default_precision(sam_of_width(768), "cpu") == "int8"  # the official student and teacher
    assert default_precision(sam_of_width(768), "cuda") == "fp32"
    assert default_precision(sam_of_width(192), "cpu") == "fp32"  # compact: int8 was slower at this width
    default = load_model("default", precision="auto")
    assert default.precision == "fp32"
    student = build_model("tiny-student")
    monkeypatch.setattr(runtime, "INT8_MIN_WIDTH", 96)
    assert Session(str(save_model(student, tmp_path / "s.safetensors")), device="cpu").precision == "int8"
    assert Session(student, device="cpu").precision == "fp32"  # a model object is used as it is
    with pytest.raises(ValueError, match="no effect on ClickUNet3D"):
        apply_model_precision(load_model("default"), "int8")
    with pytest.raises(ValueError, match="CPU only"):
        apply_model_precision(build_model("tiny-student"), "int8", device="cuda")  # checked before any CUDA call
    with pytest.raises(ValueError, match="already runs in int8"):
        apply_model_precision(apply_model_precision(build_model("tiny-student"), "int8"), "bf16")
    with pytest.raises(CheckpointError, match="runs in int8"):  # its int8 weights are not in the state dict
        save_model(apply_model_precision(build_model("tiny-student"), "int8"), tmp_path / "int8.safetensors")


def test_cli_precision_option(capsys, tmp_path, monkeypatch, intensity_model):
    import fastsam3d.registry
    from fastsam3d.io import write_volume

    requested = {}

    def fake_load_model(*args, **kwargs):
        requested.update(kwargs)
        intensity_model.precision = kwargs["precision"]
        return intensity_model

    monkeypatch.setattr(fastsam3d.registry, "load_model", fake_load_model)
    volume, _ = sphere_volume()
    image = write_volume(volume, tmp_path / "sphere.nii.gz")
    centre = ",".join(map(str, np.array(volume.shape) // 2))
    args = [
        "segment",
        str(image),
        "--point",
        centre,
        "--out",
        str(tmp_path / "o.nii.gz"),
        "--timing",
        "--device",
        "cpu",
    ]
    code = main([*args, "--precision", "bf16"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert requested["precision"] == "bf16" and str(requested["device"]) == "cpu"
    assert "precision: bf16" in captured.out + captured.err
    assert main(args) == 0 and requested["precision"] == "auto"
    assert "precision: auto (--precision auto)" in "".join(capsys.readouterr())
    with pytest.raises(SystemExit):
        main([*args, "--precision", "int4"])
    assert "invalid choice: 'int4'" in capsys.readouterr().err


def test_server_settings_precision(tmp_path):
    from fastsam3d.server.settings import ServerSettings
    from fastsam3d.server.store import SessionStore

    model = save_model(build_model("tiny-student"), tmp_path / "tiny.safetensors")
    store = SessionStore(ServerSettings(model=str(model), device="cpu", precision="int8", temp_dir=tmp_path / "t"))
    assert store.model.precision == "int8"


def test_int8_linear_scales_in_place_only_what_it_is_given():
    layer = Int8Linear.from_linear(nn.Linear(16, 8))
    x = torch.randn(5, 16) * torch.logspace(-2, 2, 5)[:, None]  # tokens of very different sizes
    before = x.clone()
    out = layer(x)
    assert torch.equal(x, before)  # forward leaves its input alone
    assert torch.equal(layer.forward_owned(x.clone()), out)  # the same numbers, scaled in place
