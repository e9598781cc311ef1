import numpy as np
import torch

from fastsam3d.data.shapes import SyntheticShapes
from fastsam3d.evaluation.clicks import center_click, dice
from fastsam3d.registry import build_model
from fastsam3d.training.interactive import SyntheticStream, interactive_loss, sample_error_click, train


def test_synthetic_samples_are_deterministic_and_valid():
    image, target = SyntheticShapes(size=64, seed=3).sample_object(min_voxels=50)
    again, target_again = SyntheticShapes(size=64, seed=3).sample_object(min_voxels=50)
    assert image.shape == target.shape == (64, 64, 64) and image.dtype == np.float32 and target.dtype == bool
    assert np.array_equal(image, again) and np.array_equal(target, target_again)
    assert target.sum() >= 50 and np.isfinite(image).all()
    inside, outside = image[target].mean(), image[~target].mean()
    assert not np.isclose(inside, outside)


def _hand_made():
    target = np.zeros((20, 20, 20), bool)
    target[2:12, 2:12, 2:12] = True  # a 10-voxel cube
    prediction = np.zeros_like(target)
    prediction[2:12, 2:12, 2:5] = True  # covers a thin slab of it
    prediction[14:18, 14:18, 14:18] = True  # and a small false positive
    return prediction, target


def test_center_click_goes_to_the_deepest_error():
    prediction, target = _hand_made()
    index, positive = center_click(prediction, target)
    assert positive and target[tuple(index)] and not prediction[tuple(index)]
    assert 5 <= index[0] <= 8 and 5 <= index[1] <= 8 and 7 <= index[2] <= 9
    prediction[:] = target
    prediction[0:6, 0:6, 14:20] = True  # only a false positive is left
    index, positive = center_click(prediction, target)
    assert not positive and prediction[tuple(index)] and not target[tuple(index)]
    assert center_click(target, target) is None


def test_error_click_sampling_stays_in_the_inner_core():
    prediction, target = _hand_made()
    rng = np.random.default_rng(0)
    for _ in range(20):
        index, label = sample_error_click(prediction, target, rng)
        assert label == 1 and target[tuple(index)] and not prediction[tuple(index)]
        assert 3 <= index[0] <= 10 and index[2] >= 6  # away from the error's border


def test_dice():
    a = np.zeros((4, 4, 4), bool)
    b = a.copy()
    a[:2] = True
    b[1:3] = True
    assert dice(a, b) == 0.5 and dice(a, a) == 1.0 and dice(a & False, b & False) == 1.0


def test_training_steps_reduce_the_loss():
    torch.manual_seed(0)
    model = build_model("tiny-student").train()
    stream = iter(SyntheticStream(64, seed=1))
    images, targets = map(torch.stack, zip(*[next(stream) for _ in range(2)]))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for step in range(15):
        loss, _ = interactive_loss(model, images, targets, rounds=2, rng=np.random.default_rng(step))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert np.mean(losses[-3:]) < 0.8 * np.mean(losses[:3]), losses


def test_resume_continues_from_the_checkpoint(tmp_path):
    train(tmp_path, "tiny-student", max_steps=2, rounds=1, workers=0, validate_every=1000, validation_samples=1)
    first = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert first["step"] == 2
    exported = train(tmp_path, "tiny-student", max_steps=3, rounds=1, workers=0, resume=True, validate_every=1000, validation_samples=1)
    second = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert second["step"] == 3
    changed = [not torch.equal(first["model"][k], second["model"][k]) for k in first["model"]]
    assert any(changed)
    assert exported.is_file() and (tmp_path / "validation.csv").read_text().count("\n") == 2


def test_error_click_without_any_target_falls_back_to_the_centre():
    empty = np.zeros((8, 8, 8), bool)
    index, label = sample_error_click(empty, empty, np.random.default_rng(0))
    assert label == 1 and tuple(index) == (4, 4, 4)


def test_parameter_efficient_fine_tuning_trains_only_adapters_and_exports(tmp_path):
    from safetensors.torch import load_file

    from fastsam3d.registry import load_model, save_model

    base = build_model("tiny-student")
    save_model(base, tmp_path / "base.safetensors")
    exported = train(tmp_path / "run", max_steps=2, rounds=1, workers=0, validate_every=1000, validation_samples=1,
                     init=str(tmp_path / "base.safetensors"), peft="hyper", cluster_after=2)
    adapters = load_file(str(tmp_path / "run" / "adapters.safetensors"))
    assert any(k.startswith("image_encoder.hyper_adapter.") for k in adapters)
    assert not any(k.startswith("image_encoder.blocks.") and "factors" not in k for k in adapters)
    tuned = load_model(exported)  # low-rank updates merged: a plain model file
    frozen_keys = [k for k in base.state_dict() if k.startswith("image_encoder.") and ".attn." not in k]
    for key in frozen_keys:  # everything outside the adapted projections is untouched
        torch.testing.assert_close(tuned.state_dict()[key], base.state_dict()[key].half().float())
    assert any(not torch.equal(tuned.state_dict()[k], base.state_dict()[k].half().float())
               for k in base.state_dict() if k.startswith("mask_decoder."))
