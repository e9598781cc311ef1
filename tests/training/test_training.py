import numpy as np
import pytest
import torch

from fastsam3d.data.streams import IndexedStream, SyntheticSource
from fastsam3d.errors import FastSAM3DError
from fastsam3d.registry import build_model
from fastsam3d.training.interactive import InteractiveLoss, sample_error_click
from fastsam3d.training.trainer import TrainSettings, learning_rate, train

from ..helpers import hand_made_errors


def test_error_click_sampling_stays_in_the_inner_core():
    prediction, target = hand_made_errors()
    rng = np.random.default_rng(0)
    for _ in range(20):
        index, label = sample_error_click(prediction, target, rng)
        assert label == 1 and target[tuple(index)] and not prediction[tuple(index)]
        assert 3 <= index[0] <= 10 and index[2] >= 6  # away from the error's border


@pytest.mark.slow
def test_training_steps_reduce_the_loss():
    torch.manual_seed(0)
    model = build_model("tiny-student").train()
    objective = InteractiveLoss(model, rounds=2, loss_size=32)
    images, targets = IndexedStream(SyntheticSource(64), batch_size=2, seed=1).batch(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for step in range(15):
        loss, _ = objective(images, targets, np.random.default_rng(step))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert np.mean(losses[-3:]) < 0.8 * np.mean(losses[:3]), losses


def _tiny(**overrides) -> TrainSettings:
    settings = {
        "config": "tiny-student",
        "minutes": None,
        "rounds": 2,
        "workers": 0,
        "validation_samples": 1,
        "epoch_steps": 1000,
        "progress": False,
        "loss_size": 32,
    }
    return TrainSettings(**(settings | overrides))


def test_the_stream_does_not_depend_on_loader_workers():
    stream = IndexedStream(SyntheticSource(32, min_voxels=20), batch_size=2, seed=5)
    loader = torch.utils.data.DataLoader(stream, batch_size=None, num_workers=2)
    batches = [batch for _, batch in zip(range(3), loader, strict=False)]  # the first 3 of an endless stream
    for index, (images, targets) in enumerate(batches):
        expected_images, expected_targets = stream.batch(index)
        assert torch.equal(images, expected_images) and torch.equal(targets, expected_targets)
    later = IndexedStream(SyntheticSource(32, min_voxels=20), batch_size=2, seed=5, start_batch=2)
    assert torch.equal(next(iter(later))[0], batches[2][0])
    other_rank = IndexedStream(SyntheticSource(32, min_voxels=20), batch_size=2, seed=5, rank=1, world=2)
    assert not torch.equal(next(iter(other_rank))[0], batches[0][0])


@pytest.mark.slow
def test_resume_reproduces_an_uninterrupted_run(tmp_path, monkeypatch):
    uninterrupted = tmp_path / "a"
    train(uninterrupted, _tiny(max_steps=4))
    interrupted = tmp_path / "b"
    forward, calls = InteractiveLoss.forward, []

    def killed_during_step_4(self, *args):
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return forward(self, *args)

    monkeypatch.setattr(InteractiveLoss, "forward", killed_during_step_4)
    with pytest.raises(KeyboardInterrupt):
        train(interrupted, _tiny(max_steps=4, checkpoint_every=2))
    monkeypatch.setattr(InteractiveLoss, "forward", forward)
    first = torch.load(interrupted / "checkpoint.pt", weights_only=True)
    assert first["step"] == 2 and (interrupted / "metrics.csv").read_text().count("\n") == 4  # header + steps 1-3
    exported = train(interrupted, _tiny(max_steps=4), resume=True)
    a = torch.load(uninterrupted / "checkpoint.pt", weights_only=True)
    b = torch.load(interrupted / "checkpoint.pt", weights_only=True)
    assert b["step"] == a["step"] == 4
    for key in a["model"]:
        torch.testing.assert_close(b["model"][key], a["model"][key], rtol=0, atol=1e-6)
    assert any(not torch.equal(first["model"][k], b["model"][k]) for k in first["model"])
    assert exported.is_file()
    rows = (interrupted / "metrics.csv").read_text().splitlines()
    assert rows[0].startswith("step,loss") and [r.split(",")[0] for r in rows[1:]] == ["1", "2", "3", "4"]
    validation = (interrupted / "validation.csv").read_text().splitlines()
    assert validation[0].startswith("step,set,dice_click1") and len(validation) == 2
    with pytest.raises(FastSAM3DError, match="written by another run"):
        train(interrupted, _tiny(max_steps=6, seed=1), resume=True)


def test_learning_rate_warms_up_then_decays():
    settings = TrainSettings(max_steps=1000, warmup_steps=100, lr=1e-3)
    rates = [learning_rate(settings, step, 0.0) for step in (0, 50, 99, 500, 999)]
    assert rates[0] < rates[1] < rates[2] and rates[2] > rates[3] > rates[4]
    assert 0.95e-3 < rates[2] <= 1e-3 and rates[4] == 2e-5


def test_error_click_without_any_target_falls_back_to_the_centre():
    empty = np.zeros((8, 8, 8), bool)
    index, label = sample_error_click(empty, empty, np.random.default_rng(0))
    assert label == 1 and tuple(index) == (4, 4, 4)


@pytest.mark.slow
def test_parameter_efficient_fine_tuning_trains_only_adapters_and_exports(tmp_path):
    from safetensors.torch import load_file

    from fastsam3d.registry import load_model, save_model

    base = build_model("tiny-student")
    save_model(base, tmp_path / "base.safetensors")
    exported = train(
        tmp_path / "run", _tiny(max_steps=2, init=str(tmp_path / "base.safetensors"), peft="hyper", cluster_after=2)
    )
    adapters = load_file(str(tmp_path / "run" / "adapters.safetensors"))
    assert any(k.startswith("image_encoder.hyper_adapter.") for k in adapters)
    assert not any(k.startswith("image_encoder.blocks.") and "factors" not in k for k in adapters)
    tuned = load_model(exported)  # low-rank updates merged: a plain model file
    assert tuned.config.cluster_after == 2  # and it runs with the clustering it was trained with
    frozen_keys = [k for k in base.state_dict() if k.startswith("image_encoder.") and ".attn." not in k]
    for key in frozen_keys:  # everything outside the adapted projections is untouched
        torch.testing.assert_close(tuned.state_dict()[key], base.state_dict()[key].half().float())
    assert any(
        not torch.equal(tuned.state_dict()[k], base.state_dict()[k].half().float())
        for k in base.state_dict()
        if k.startswith("mask_decoder.")
    )


@pytest.mark.slow
def test_a_non_finite_loss_skips_the_batch_without_touching_the_weights(tmp_path, monkeypatch):
    forward = InteractiveLoss.forward

    def broken(self, *args):
        loss, scores = forward(self, *args)
        return loss * float("nan"), scores

    monkeypatch.setattr(InteractiveLoss, "forward", broken)
    torch.manual_seed(0)
    before = build_model("tiny-student").state_dict()
    train(tmp_path, _tiny(max_steps=2))
    after = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert after["step"] == 2
    for key, value in before.items():
        assert torch.equal(after["model"][key], value), key
