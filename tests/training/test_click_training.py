"""Training of the default model's architecture (ClickUNet3D): real optimiser steps under autograd,
the crop loader's stream, resume, and `fastsam3d train-default` end to end."""

import numpy as np
import pytest
import torch

import fastsam3d.training.click_training as click_training
from fastsam3d.cli import main
from fastsam3d.data.brains import brain_manifest
from fastsam3d.data.devdata import dev_manifest
from fastsam3d.data.streams import IndexedStream, SyntheticSource
from fastsam3d.registry import build_model, load_model
from fastsam3d.simulated_strokes import stroke_points
from fastsam3d.training.click_training import ClickTrainSettings, crop_loader, interactive_loss, train_click_model


def _optimiser_steps(model: torch.nn.Module, steps: int = 3, settings: ClickTrainSettings | None = None) -> list[float]:
    """``steps`` AdamW steps of the interactive objective on 32³ synthetic crops; every parameter
    tensor must receive a finite, non-zero gradient and change."""
    settings = settings or ClickTrainSettings(max_corrections=2, box_rate=0.5)
    optimiser = torch.optim.AdamW(model.parameters(), lr=1e-3)
    before = {name: value.detach().clone() for name, value in model.named_parameters()}
    batches = iter(crop_loader(SyntheticSource(32, min_voxels=50), ClickTrainSettings(workers=0), 0))
    losses = []
    for step in range(steps):
        images, targets = next(batches)
        loss, _ = interactive_loss(model, images, targets, settings, np.random.default_rng(step))
        optimiser.zero_grad()
        loss.backward()
        for name, parameter in model.named_parameters():
            assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), name
            assert parameter.grad.abs().sum() > 0, f"no gradient reaches {name}"
        optimiser.step()
        losses.append(loss.item())
    assert all(np.isfinite(losses))
    unchanged = [name for name, value in model.named_parameters() if torch.equal(value, before[name])]
    assert not unchanged, unchanged
    return losses


def test_the_default_architecture_trains_from_scratch():
    torch.manual_seed(0)
    _optimiser_steps(build_model("click-unet").train())


def test_the_shipped_default_weights_train_on():
    _optimiser_steps(load_model("default").train())


def test_the_shipped_default_weights_train_on_with_lassos_and_scribbles():
    settings = ClickTrainSettings(max_corrections=2, box_rate=0.0, stroke_rate=1.0, corrective_stroke_rate=0.5)
    _optimiser_steps(load_model("default").train(), settings=settings)


def test_simulated_strokes_are_the_points_the_engine_would_give():
    truth = np.zeros((32, 32, 32), dtype=bool)
    truth[8:24, 10:22, 6:26] = True
    rng = np.random.default_rng(0)
    kinds = set()
    for _ in range(8):
        points, labels = stroke_points(np.zeros_like(truth), truth, rng)
        voxels = points.round().astype(int)
        inside = truth[tuple(voxels.T)]
        assert np.array_equal(inside, np.array(labels) == 1)  # include points on the target, band outside
        kinds.add(0 in labels)  # a lasso brings an exclude band, a scribble does not
    assert kinds == {True, False}
    extra = truth.copy()
    extra[24:28] = True  # a false positive slab: an exclude stroke on it
    _, labels = stroke_points(extra, truth, rng)
    assert set(labels) == {0}


def test_the_loader_gives_the_seeded_stream_from_any_step_with_workers():
    source = SyntheticSource(32, min_voxels=20)
    settings = ClickTrainSettings(batch_size=2, seed=3, workers=1)
    loaded = [batch for _, batch in zip(range(2), crop_loader(source, settings, start_step=5), strict=False)]
    stream = IndexedStream(source, batch_size=2, seed=3)
    for offset, (images, targets) in enumerate(loaded):
        expected_images, expected_targets = stream.batch(5 + offset)
        assert torch.equal(images, expected_images) and torch.equal(targets, expected_targets)


def test_an_interrupted_run_resumes_to_the_same_weights(tmp_path, monkeypatch):
    source = SyntheticSource(32, min_voxels=30)
    settings = ClickTrainSettings(steps=4, checkpoint_every=2, workers=0, max_corrections=1)
    torch.manual_seed(0)
    whole = train_click_model(tmp_path / "whole", source, settings, progress=False)
    loss, calls = click_training.interactive_loss, []

    def killed_during_step_3(*args):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return loss(*args)

    monkeypatch.setattr(click_training, "interactive_loss", killed_during_step_3)
    torch.manual_seed(0)
    with pytest.raises(KeyboardInterrupt):
        train_click_model(tmp_path / "split", source, settings, progress=False)
    monkeypatch.setattr(click_training, "interactive_loss", loss)
    assert torch.load(tmp_path / "split" / "checkpoint.pt", weights_only=True)["step"] == 2
    resumed = train_click_model(tmp_path / "split", source, settings, progress=False)
    for (name, a), b in zip(whole.state_dict().items(), resumed.state_dict().values(), strict=True):
        torch.testing.assert_close(b, a, rtol=0, atol=1e-6, msg=name)


@pytest.mark.slow
@pytest.mark.skipif(
    dev_manifest() is None or brain_manifest() is None,
    reason="training data not fetched: run `fastsam3d data fetch` (scripts/install.sh does)",
)
def test_train_default_for_a_few_seconds_writes_weights_and_metrics(tmp_path, capsys):
    code = main(["train-default", "--minutes", "0.1", "--out", str(tmp_path), "--workers", "1"])
    assert code == 0, capsys.readouterr().err
    assert (tmp_path / "default.safetensors").is_file()
    model = load_model(str(tmp_path / "default.safetensors"))
    assert model.roi_spacings == (1.5, 3.0)
    metrics = (tmp_path / "train" / "metrics.csv").read_text().splitlines()
    assert metrics[0].startswith("step,loss") and len(metrics) >= 2
    validation = (tmp_path / "train" / "validation.csv").read_text().splitlines()
    assert len(validation) == 2 and int(validation[1].split(",")[1]) >= 30  # torso and brain structures
