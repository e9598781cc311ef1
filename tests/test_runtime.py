"""The exported encoder (fastsam3d.runtime) in ONNX Runtime and OpenVINO: same outputs as torch, the
cache, refusals, the extra."""

from __future__ import annotations

import copy
import importlib.util
import os
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from fastsam3d import build_model
from fastsam3d.cli import main
from fastsam3d.errors import CheckpointError
from fastsam3d.extras import MissingExtra
from fastsam3d.registry import save_model
from fastsam3d.runtime import (
    OnnxEncoder,
    OpenVinoEncoder,
    UnsupportedEncoder,
    apply_model_precision,
    cache_dir,
    default_precision,
    export_encoder,
    prune_encoders,
    use_onnx_encoder,
)

needs_onnx = pytest.mark.skipif(
    importlib.util.find_spec("onnxruntime") is None or importlib.util.find_spec("onnx") is None,
    reason="onnx / onnxruntime not installed: pip install 'fastsam3d[fast]'",
)


needs_openvino = pytest.mark.skipif(
    importlib.util.find_spec("openvino") is None, reason="openvino not installed: pip install 'fastsam3d[fast]'"
)


@pytest.fixture(autouse=True)
def onnx_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FASTSAM3D_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "onnx"


def _student(seed: int = 0):
    torch.manual_seed(seed)
    return build_model("tiny-student")


def _correlation(a: torch.Tensor, b: torch.Tensor) -> float:
    return torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1].item()


@needs_onnx
def test_onnx_encoder_matches_torch_and_the_cache_is_reused(monkeypatch, onnx_cache):
    model = _student()
    crop = torch.randn(2, 1, 64, 64, 64)
    point, labels = torch.tensor([[[32.0, 32.0, 32.0]]]).expand(2, 1, 3), torch.ones(2, 1, dtype=torch.int64)
    with torch.inference_mode():
        reference = model.encode(crop)
        reference_logits, _ = model.decode(reference, point, labels)
    fast = apply_model_precision(copy.deepcopy(model), "onnx-fp32")
    assert fast.precision == "onnx-fp32" and isinstance(fast.image_encoder, OnnxEncoder)
    with torch.inference_mode():
        embedding = fast.encode(crop)  # a batch of two, run one by one
        logits, _ = fast.decode(embedding, point, labels)
    assert embedding.shape == reference.shape
    assert torch.allclose(embedding, reference, atol=1e-4)
    assert torch.allclose(logits, reference_logits, atol=1e-4)
    int8 = apply_model_precision(copy.deepcopy(model), "onnx-int8")
    with torch.inference_mode():
        assert _correlation(int8.decode(int8.encode(crop), point, labels)[0], reference_logits) > 0.999
    assert len(list(onnx_cache.glob("*.onnx"))) == 2

    def no_export(*args, **kwargs):
        raise AssertionError("exported again")

    monkeypatch.setattr("fastsam3d.runtime.export_encoder", no_export)
    again = apply_model_precision(copy.deepcopy(model), "onnx-fp32")
    assert again.image_encoder.path == fast.image_encoder.path


@needs_onnx
@pytest.mark.parametrize("precision", ["onnx-fp32", pytest.param("openvino-fp32", marks=needs_openvino)])
def test_the_default_models_unet_runs_exported_with_channels_last_features(precision):
    torch.manual_seed(0)
    model = build_model("click-unet")
    crop = torch.randn(1, 1, *(model.img_size,) * 3) * 300
    point, labels = torch.tensor([[[10.0, 12.0, 14.0]]]), torch.ones(1, 1, dtype=torch.int64)
    fast = apply_model_precision(copy.deepcopy(model), precision)
    with torch.inference_mode():
        reference = model.encode(crop)
        features = fast.encode(crop)
        logits, _ = fast.decode(features, point, labels)
        reference_logits, _ = model.decode(reference, point, labels)
    for ours, theirs in zip(
        [*features.shares, features.unit, features.head],
        [*reference.shares, reference.unit, reference.head],
        strict=True,
    ):
        assert ours.shape == theirs.shape
        assert ours.is_contiguous(memory_format=torch.channels_last_3d)  # as torch's: no copy per click
        assert torch.allclose(ours, theirs, atol=1e-3)
    assert torch.allclose(logits, reference_logits, atol=1e-3)


@needs_onnx
@needs_openvino
def test_openvino_runs_the_students_encoder_from_the_same_cached_file(monkeypatch, onnx_cache):
    model = _student()
    crop = torch.randn(2, 1, 64, 64, 64)
    with torch.inference_mode():
        reference = model.encode(crop)
    in_onnx = apply_model_precision(copy.deepcopy(model), "onnx-fp32")
    monkeypatch.setattr("fastsam3d.runtime.export_encoder", lambda *a, **k: pytest.fail("exported again"))
    fast = apply_model_precision(copy.deepcopy(model), "openvino-fp32")
    assert fast.precision == "openvino-fp32" and isinstance(fast.image_encoder, OpenVinoEncoder)
    assert fast.image_encoder.path == in_onnx.image_encoder.path
    with torch.inference_mode():
        assert torch.allclose(fast.encode(crop), reference, atol=1e-4)  # a batch of two, one by one
    with pytest.raises(CheckpointError, match="in OpenVINO"):
        OpenVinoEncoder(onnx_cache / "missing.onnx", 64)
    with pytest.raises(CheckpointError, match="was made for tiny-student \\(fp32\\), not for these weights"):
        use_onnx_encoder(_student(seed=1), "openvino-fp32", path=in_onnx.image_encoder.path)
    with pytest.raises(ValueError, match="runs on the CPU only"):
        apply_model_precision(copy.deepcopy(model), "openvino-fp32", "cuda")


@needs_onnx
@needs_openvino
def test_openvino_answers_threads_at_once_each_with_its_own_result():
    model = apply_model_precision(build_model("click-unet"), "openvino-fp32")
    crops = [torch.randn(1, 2, *(model.img_size,) * 3) * scale for scale in (1.0, 5.0, 20.0, 50.0)]
    alone = [model.onnx_encoder(crop) for crop in crops]
    with ThreadPoolExecutor(4) as pool:  # a server's sessions: requests at once on one compiled model
        together = list(pool.map(model.onnx_encoder, crops * 3))
    for index, outputs in enumerate(together):
        assert all(torch.equal(a, b) for a, b in zip(outputs, alone[index % len(crops)], strict=True))


@needs_onnx
@needs_openvino
def test_an_encoder_openvino_cannot_convert_is_refused_in_one_line_and_not_exported_again(monkeypatch):
    teacher = build_model("tiny-teacher")  # padded windows: an export OpenVINO cannot convert
    apply_model_precision(copy.deepcopy(teacher), "onnx-fp32")  # the shared fp32 file, sound
    monkeypatch.setattr("fastsam3d.runtime.export_encoder", lambda *a, **k: pytest.fail("exported again"))
    with pytest.raises(UnsupportedEncoder, match=r"OpenVINO cannot run .* convert its ScatterND, Slice operations"):
        apply_model_precision(teacher, "openvino-fp32")


@needs_onnx
def test_a_corrupt_cached_file_is_rebuilt_and_a_mismatched_file_refused(tmp_path, onnx_cache):
    model = _student()
    first = apply_model_precision(copy.deepcopy(model), "onnx-fp32").image_encoder.path
    first.write_bytes(b"not an onnx file")
    rebuilt = apply_model_precision(copy.deepcopy(model), "onnx-fp32").image_encoder.path
    assert rebuilt == first and rebuilt.stat().st_size > 1000
    path = export_encoder(model, tmp_path / "student.onnx")
    use_onnx_encoder(copy.deepcopy(model), "onnx-fp32", path=path)  # its own file is accepted
    with pytest.raises(CheckpointError, match="was made for tiny-student \\(fp32\\), not for these weights"):
        use_onnx_encoder(_student(seed=1), "onnx-fp32", path=path)
    with pytest.raises(CheckpointError, match="not for these weights in this precision"):
        use_onnx_encoder(copy.deepcopy(model), "onnx-int8", path=path)
    (tmp_path / "broken.onnx").write_bytes(b"\x00" * 10)
    with pytest.raises(CheckpointError, match="cannot load the ONNX encoder"):
        use_onnx_encoder(copy.deepcopy(model), "onnx-fp32", path=tmp_path / "broken.onnx")


@needs_onnx
def test_the_cache_keeps_the_three_encoders_of_a_model_used_last(onnx_cache):
    """Each code version or checkpoint exports a new file: opening one keeps it and the two others of
    that model and precision used last, and deletes older ones; other models' files stay."""
    onnx_cache.mkdir(parents=True)
    stale = [onnx_cache / f"tiny-student-fp32-{index:016x}.onnx" for index in range(4)]
    others = [onnx_cache / "tiny-student-int8-0000000000000000.onnx", onnx_cache / "default-fp32-0000000000000000.onnx"]
    for age, path in enumerate([*stale, *others]):
        path.write_bytes(b"an older export")
        os.utime(path, (1e9 - age, 1e9 - age))  # stale[0] used last
    used = apply_model_precision(_student(), "onnx-fp32").image_encoder.path
    assert used.is_file() and used not in stale
    assert sorted(onnx_cache.glob("tiny-student-fp32-*.onnx")) == sorted([used, *stale[:2]])
    assert all(path.is_file() for path in others)
    os.utime(used, (1, 1))  # as if used long ago: opening it again from the cache marks it used
    assert apply_model_precision(_student(), "onnx-fp32").image_encoder.path == used and used.is_file()
    os.utime(stale[1], (2e9, 2e9))  # used after the export
    assert prune_encoders("tiny-student", "fp32", keep=1) == [used, stale[0]]
    assert [path.name for path in onnx_cache.glob("tiny-student-fp32-*.onnx")] == [stale[1].name]


@needs_onnx
def test_a_cache_whose_files_cannot_be_touched_still_serves_them(monkeypatch, onnx_cache):
    """A read-only cache (its files' times cannot be set) is read as it is."""
    apply_model_precision(_student(), "onnx-fp32")

    def refused(*args, **kwargs):
        raise PermissionError("read-only file system")

    monkeypatch.setattr(os, "utime", refused)
    assert isinstance(apply_model_precision(_student(), "onnx-fp32").image_encoder, OnnxEncoder)


@needs_onnx
def test_export_command_writes_a_file_the_runtime_accepts(tmp_path):
    model = _student()
    checkpoint = save_model(model, tmp_path / "student.safetensors")
    out = tmp_path / "encoder.onnx"
    assert main(["-q", "export", str(checkpoint), "--format", "onnx", "--out", str(out), "--precision", "int8"]) == 0
    assert use_onnx_encoder(copy.deepcopy(model), "onnx-int8", path=out).precision == "onnx-int8"
    assert not list(cache_dir().glob("*.onnx"))  # an explicit file does not touch the cache


def test_without_onnxruntime_a_request_names_the_extra(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name in ("onnxruntime", "onnx") else real(name, *a)
    )
    model = _student()
    assert apply_model_precision(copy.deepcopy(model), "auto").precision == "fp32"  # auto never needs it
    with pytest.raises(MissingExtra, match=r"needs onnxruntime, onnx: pip install 'fastsam3d\[fast\]'"):
        apply_model_precision(copy.deepcopy(model), "onnx-fp32")


@needs_onnx
def test_a_2d_sams_tinyvit_runs_in_onnx_with_the_same_embedding(onnx_cache):
    model = build_model("litemedsam")  # the architecture, untrained
    images = torch.randn(2, 3, model.img_size, model.img_size)
    with torch.inference_mode():
        reference = model.encode(images)
    fast = apply_model_precision(copy.deepcopy(model), "onnx-fp32")
    assert fast.precision == "onnx-fp32" and isinstance(fast.image_encoder, OnnxEncoder)
    with torch.inference_mode():
        embedding = fast.encode(images)
    assert embedding.shape == reference.shape and torch.allclose(embedding, reference, atol=1e-4)
    assert len(list(onnx_cache.glob("litemedsam-fp32-*.onnx"))) == 1


@needs_onnx
def test_onnx_is_opt_in_for_3d_models_auto_for_litemedsam_and_cpu_only(monkeypatch):
    from fastsam3d import runtime

    model = _student()
    assert default_precision(build_model("fastsam3d"), "cpu") == "int8"  # torch's: as fast in a session here
    assert default_precision(model, "cpu") == "fp32"
    # LiteMedSAM's TinyViT: ONNX Runtime's fp32, 1.6x faster with the same masks (its int8 failed the gate)
    assert default_precision(build_model("litemedsam"), "cpu") == "onnx-fp32"
    assert default_precision(build_model("litemedsam"), "cuda") == "fp32"
    assert default_precision(build_model("medsam"), "cpu") == "fp32"  # ViT-B: not measured, torch
    monkeypatch.setattr(runtime, "onnx_runtime_available", lambda: False)
    assert default_precision(build_model("litemedsam"), "cpu") == "fp32"  # without the fast extra
    with pytest.raises(ValueError, match="onnx-fp32 runs on the CPU only"):
        apply_model_precision(copy.deepcopy(model), "onnx-fp32", "meta")


@pytest.mark.parametrize("hardware", [False, True])
def test_bf16_on_a_cpu_without_bf16_hardware_warns(monkeypatch, hardware):
    """Emulated bf16 ran the default model's encoder 100x slower here: asking for it says so."""
    import warnings

    from fastsam3d import runtime

    monkeypatch.setattr(runtime, "cpu_has_bf16", lambda: hardware)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = runtime.apply_model_precision(build_model("tiny-student"), "bf16", "cpu")
    emulated = [w for w in caught if "emulated" in str(w.message)]
    assert model.precision == "bf16" and len(emulated) == (0 if hardware else 1)
