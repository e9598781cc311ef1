"""``auto`` by measurement (fastsam3d.tuning): the candidates per model, the choice of the fastest
that keeps the masks, the remembered file, and a real measurement through ``load_model``."""

from __future__ import annotations

import importlib.util
import json
import logging
import time

import numpy as np
import pytest
import torch

from fastsam3d import build_model, tuning
from fastsam3d.errors import PromptError
from fastsam3d.registry import load_model
from fastsam3d.runtime import default_precision, rule_precision

needs_fast = pytest.mark.skipif(
    any(importlib.util.find_spec(name) is None for name in ("onnxruntime", "onnx", "openvino")),
    reason="the fast extra is not installed: pip install 'fastsam3d[fast]'",
)


@pytest.fixture(autouse=True)
def measuring(monkeypatch, tmp_path):
    monkeypatch.setenv("FASTSAM3D_AUTO_PRECISION", "measure")
    monkeypatch.setenv("FASTSAM3D_CACHE", str(tmp_path / "cache"))


class _Probe:
    """A stand-in for a probe session: the label map a precision gives."""

    def __init__(self, labels: np.ndarray) -> None:
        self.labels = labels

    def label_map(self) -> np.ndarray:
        return self.labels


def _fake_runtimes(monkeypatch, seconds: dict[str, float], masks: dict, failing: str | None = None):
    """Candidates that take ``seconds`` per first click and give ``masks`` (None: the model finds
    nothing); ``failing`` cannot be applied."""

    def apply(model, precision, device="cpu"):
        if precision == failing:
            raise RuntimeError("this runtime cannot load here")
        model.precision = precision
        return model

    def probe(model, device=None):
        time.sleep(seconds[model.precision])
        if masks[model.precision] is None:
            raise PromptError("the model found nothing inside the box")
        return _Probe(masks[model.precision])

    monkeypatch.setattr("fastsam3d.runtime.apply_model_precision", apply)
    monkeypatch.setattr("fastsam3d.engine.interface.probe_session", probe)


def test_candidates_are_the_gated_precisions_that_can_run_here():
    fast = ("onnx-fp32", "openvino-fp32") if importlib.util.find_spec("openvino") else ("onnx-fp32",)
    assert tuning.candidates(build_model("click-unet"), "cpu") == ("fp32", *fast)
    assert tuning.candidates(build_model("litemedsam"), "cpu") == ("fp32", *fast)
    assert tuning.candidates(build_model("medsam"), "cpu") == ()  # ViT-B 2D: measured nowhere, the rule
    assert tuning.candidates(build_model("click-unet"), "cuda") == ()


def test_the_fastest_precision_whose_mask_agrees_is_chosen_and_remembered(monkeypatch, caplog):
    ball = np.zeros((8, 8, 8), np.uint8)
    ball[2:6, 2:6, 2:6] = 1
    wrong = np.zeros_like(ball)
    wrong[6:, 6:, 6:] = 1
    seconds = {"fp32": 0.03, "onnx-fp32": 0.02, "openvino-fp32": 0.001}
    masks = {"fp32": ball, "onnx-fp32": ball, "openvino-fp32": wrong}  # the fastest one is wrong
    _fake_runtimes(monkeypatch, seconds, masks)
    monkeypatch.setattr(tuning, "candidates", lambda model, device: ("fp32", "onnx-fp32", "openvino-fp32"))
    model = build_model("click-unet")
    with caplog.at_level(logging.INFO, logger="fastsam3d"):
        found = tuning.measured_precision(model, "cpu")
    assert found.precision == "onnx-fp32"
    assert set(found.first_click_ms) == {"fp32", "onnx-fp32"}
    assert found.first_click_ms["onnx-fp32"] < found.first_click_ms["fp32"]
    assert "mask Dice 0.000 against fp32" in found.rejected["openvino-fp32"]
    assert "precision auto: onnx-fp32 for click-unet: first click" in caplog.text
    assert getattr(model, "precision", "fp32") == "fp32"  # the candidates ran on copies
    stored = json.loads(tuning.tuning_file().read_text())
    (entry,) = stored.values()
    assert entry["machine"]["threads"] == torch.get_num_threads()
    assert next(iter(entry["models"].values()))["precision"] == "onnx-fp32"

    monkeypatch.setattr(tuning, "measure", lambda *a: pytest.fail("measured again"))
    assert default_precision(model, "cpu") == "onnx-fp32"  # read from the file
    monkeypatch.setenv("FASTSAM3D_AUTO_PRECISION", "rule")
    assert default_precision(model, "cpu") == rule_precision(model, "cpu") == "fp32"


def test_a_runtime_that_fails_is_dropped_and_a_corrupt_file_measured_again(monkeypatch, caplog):
    ball = np.ones((4, 4, 4), np.uint8)
    seconds = {"fp32": 0.01, "onnx-fp32": 0.001, "openvino-fp32": 0.0}
    _fake_runtimes(monkeypatch, seconds, dict.fromkeys(seconds, ball), failing="openvino-fp32")
    monkeypatch.setattr(tuning, "candidates", lambda model, device: ("fp32", "onnx-fp32", "openvino-fp32"))
    tuning.tuning_file().parent.mkdir(parents=True)
    tuning.tuning_file().write_text("{ not json")
    with caplog.at_level(logging.WARNING, logger="fastsam3d"):
        found = tuning.measured_precision(build_model("click-unet"), "cpu")
    assert "measuring again" in caplog.text
    assert found.precision == "onnx-fp32"
    assert found.rejected == {"openvino-fp32": "RuntimeError: this runtime cannot load here"}


def test_a_model_that_finds_nothing_on_the_probe_is_timed_all_the_same(monkeypatch):
    ball = np.ones((4, 4, 4), np.uint8)
    seconds = {"fp32": 0.01, "onnx-fp32": 0.001, "openvino-fp32": 0.0}
    _fake_runtimes(monkeypatch, seconds, {"fp32": None, "onnx-fp32": None, "openvino-fp32": ball})
    monkeypatch.setattr(tuning, "candidates", lambda model, device: ("fp32", "onnx-fp32", "openvino-fp32"))
    found = tuning.measured_precision(build_model("litemedsam"), "cpu")  # untrained: nothing in the box
    assert found.precision == "onnx-fp32"
    assert found.rejected == {"openvino-fp32": "mask Dice 0.000 against fp32 on the probe"}


def test_a_model_that_cannot_run_the_probe_falls_back_to_the_rule_unremembered(monkeypatch, caplog):
    seconds = {"fp32": 0.0, "onnx-fp32": 0.0}
    _fake_runtimes(monkeypatch, seconds, dict.fromkeys(seconds, np.ones((2, 2, 2), np.uint8)), failing="fp32")
    monkeypatch.setattr(tuning, "candidates", lambda model, device: ("fp32", "onnx-fp32"))
    model = build_model("click-unet")
    with caplog.at_level(logging.WARNING, logger="fastsam3d"):
        assert default_precision(model, "cpu") == rule_precision(model, "cpu")
    assert "could not measure the precisions of click-unet (fp32 cannot run the probe" in caplog.text
    assert not tuning.tuning_file().exists()


def test_nothing_is_measured_with_one_candidate_or_on_a_gpu(monkeypatch):
    monkeypatch.setattr(tuning, "measure", lambda *a: pytest.fail("measured"))
    assert tuning.measured_precision(build_model("medsam"), "cpu") is None
    assert tuning.measured_precision(build_model("click-unet"), "cuda") is None
    assert not tuning.tuning_file().exists()


@needs_fast
def test_auto_measures_the_real_runtimes_once_and_keeps_the_masks(caplog):
    torch.manual_seed(0)
    with caplog.at_level(logging.INFO, logger="fastsam3d"):
        model = load_model("default", precision="auto")  # the shipped model: real masks on the probe
    (measured,) = [
        json.loads(tuning.tuning_file().read_text())[tuning.machine_key()]["models"][k]
        for k in [tuning.architecture_key(build_model("default"))]
    ]
    assert model.precision == measured["precision"]
    assert set(measured["first_click_ms"]) | set(measured["rejected"]) == {"fp32", "onnx-fp32", "openvino-fp32"}
    assert not measured["rejected"]  # the exported encoders keep the shipped model's mask on the probe
    assert "measuring which precision" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="fastsam3d"):
        assert load_model("default", precision="auto").precision == model.precision
    assert "measuring" not in caplog.text


def test_the_precision_command_lists_and_measures_again(monkeypatch, capsys):
    from fastsam3d.cli import main

    ball = np.ones((4, 4, 4), np.uint8)
    seconds = {"fp32": 0.01, "onnx-fp32": 0.0}
    _fake_runtimes(monkeypatch, seconds, dict.fromkeys(seconds, ball))
    monkeypatch.setattr(tuning, "candidates", lambda model, device: ("fp32", "onnx-fp32"))
    assert main(["precision"]) == 0
    assert "nothing measured here yet" in capsys.readouterr().out
    assert main(["precision", "default"]) == 0
    assert "default: not measured here yet (candidates fp32, onnx-fp32); add --measure" in capsys.readouterr().out
    assert main(["precision", "default", "--measure"]) == 0
    assert "onnx-fp32 for default: first click" in capsys.readouterr().out
    seconds.update({"fp32": 0.0, "onnx-fp32": 0.01})  # the machine changed: measured again on request
    assert main(["precision", "default", "--measure"]) == 0
    assert main(["precision"]) == 0
    assert capsys.readouterr().out.splitlines()[-1].startswith("  fp32 for default: first click")
    assert main(["precision", "--measure"]) == 2


def test_candidates_share_the_weights_and_leave_the_model_as_it_was():
    """Each candidate is a copy of the modules around the same weight tensors (no second copy of a
    large model's weights while measuring); converting one leaves the measured model in fp32."""
    from fastsam3d.modeling.precision import Int8Linear

    torch.manual_seed(0)
    model = build_model("tiny-student").eval()
    before = {name: value.clone() for name, value in model.state_dict().items()}
    candidate = tuning._sharing_copy(model)
    assert all(mine is theirs for mine, theirs in zip(model.parameters(), candidate.parameters(), strict=True))
    assert candidate.image_encoder is not model.image_encoder
    found = tuning.measure(model, ("fp32", "int8"))
    assert set(found.first_click_ms) | set(found.rejected) == {"fp32", "int8"}
    assert getattr(model, "precision", "fp32") == "fp32"
    assert not any(isinstance(module, Int8Linear) for module in model.modules())
    after = model.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[name], before[name]) for name in before)
    assert all(parameter.requires_grad for parameter in model.parameters())
