import numpy as np
import pytest
import torch

from fastsam3d.clicks import dice
from fastsam3d.engine.session3d import Session
from fastsam3d.errors import PromptError, VolumeError
from fastsam3d.io import Volume, read_volume
from fastsam3d.registry import build_model

from ..helpers import sphere_volume


def test_click_on_sphere_gives_mask_in_the_same_world_place(intensity_model, tmp_path):
    volume, truth = sphere_volume()
    session = Session(intensity_model)
    session.set_image(volume)
    session.add_click((10.0, -25.0, 40.0), frame="lps")  # the sphere centre, LPS mm
    mask = session.mask()
    assert dice(mask, truth) > 0.9
    path = session.save_labels(tmp_path / "seg.nii.gz")
    saved = read_volume(path)
    assert saved.shape == volume.shape
    assert np.allclose(saved.spacing, volume.spacing) and np.allclose(saved.direction, volume.direction, atol=1e-6)
    assert np.allclose(saved.origin, volume.origin, atol=1e-4)
    assert np.array_equal(saved.array.astype(bool), mask)


def test_ras_world_points_and_voxel_points_agree(intensity_model):
    volume, _ = sphere_volume()
    centre = np.array([10.0, -25.0, 40.0])
    index = volume.world_to_index(centre)
    masks = []
    for kwargs, point in (({}, index), ({"frame": "lps"}, centre), ({"frame": "ras"}, centre * [-1, -1, 1])):
        session = Session(intensity_model)
        session.set_image(volume)
        session.add_click(point, **kwargs)
        masks.append(session.mask())
    assert np.array_equal(masks[0], masks[1]) and np.array_equal(masks[0], masks[2]) and masks[0].any()
    with pytest.raises(PromptError, match="unknown point frame 'world'"):
        session.add_click(centre, frame="world")


def test_second_click_reuses_embedding_and_equals_fresh_session():
    model = build_model("tiny-teacher")
    volume, _ = sphere_volume()
    clicks = [((60, 50, 22), True), ((62, 47, 20), False), ((58, 52, 23), True)]
    first = Session(model, max_rois=1)
    first.set_image(volume)
    for point, positive in clicks[:2]:
        first.add_click(point, positive)
    assert first.encoder_runs == 1 and first.decoder_runs == 2
    first.add_click(*clicks[2])
    assert first.encoder_runs == 1
    fresh = Session(model, max_rois=1)
    fresh.set_image(volume)
    for point, positive in clicks:
        fresh.add_click(point, positive)
    ((roi_a, logits_a),) = first.objects[1].state.logits
    ((roi_b, logits_b),) = fresh.objects[1].state.logits
    assert roi_a == roi_b
    assert torch.equal(logits_a, logits_b)
    assert np.array_equal(first.label_map(), fresh.label_map())


def test_undo_redo_and_reset(intensity_model):
    volume, _ = sphere_volume()
    session = Session(intensity_model)
    session.set_image(volume)
    centre = volume.world_to_index(np.array([10.0, -25.0, 40.0]))
    session.add_click(centre)
    full = session.mask()
    session.add_click(centre, positive=False)  # carve a 12-voxel ball out of it
    carved = session.mask()
    assert carved.sum() < full.sum()
    assert session.undo() and np.array_equal(session.mask(), full)
    assert session.undo() and not session.mask().any() and not session.label_map().any()
    assert not session.undo()
    assert session.redo() and session.redo() and np.array_equal(session.mask(), carved)
    assert not session.redo()
    session.undo()
    session.add_click(centre, positive=True)  # a new branch drops the redo future
    assert not session.redo()
    session.reset()
    assert not session.mask().any()
    assert session.undo() and session.mask().any()


def test_several_objects_make_one_label_map(intensity_model):
    volume, _ = sphere_volume()
    session = Session(intensity_model)
    session.set_image(volume)
    centre = volume.world_to_index(np.array([10.0, -25.0, 40.0]))
    first = session.add_object("sphere")
    session.add_click(centre)
    second = session.add_object("second")
    session.add_click(centre)
    session.add_click(volume.world_to_index(np.array([25.0, -25.0, 40.0])), positive=False)  # carve one side
    labels = session.label_map()
    assert set(np.unique(labels)) == {0, first, second}
    assert np.array_equal(labels == second, session.mask(second))
    assert np.array_equal((labels == first) | (labels == second), session.mask(first))
    session.undo(second)
    assert np.array_equal(session.label_map() == second, session.mask(first))
    session.remove_object(second)
    assert np.array_equal(session.label_map() == first, session.mask(first))


def test_box_prompt_is_emulated_and_clips(intensity_model):
    volume, _ = sphere_volume()
    session = Session(intensity_model)
    session.set_image(volume)
    centre = np.round(volume.world_to_index(np.array([10.0, -25.0, 40.0]))).astype(int)
    session.set_box(centre - [30, 30, 4], centre + [5, 30, 4])
    mask = session.mask()
    assert mask.any()
    assert not mask[centre[0] + 6 :].any() and not mask[:, :, centre[2] + 5 :].any()


def test_initial_mask_prompt(intensity_model):
    volume, truth = sphere_volume()
    session = Session(intensity_model)
    session.set_image(volume)
    session.set_mask(truth)
    assert np.array_equal(session.mask(), truth)
    session.add_click(volume.world_to_index(np.array([10.0, -25.0, 40.0])))
    assert dice(session.mask(), truth) > 0.9


def test_uncertainty_costs_no_encoder_run():
    model = build_model("tiny-student")
    volume, _ = sphere_volume()
    session = Session(model, max_rois=1)
    session.set_image(volume)
    session.add_click((60, 50, 22))
    result = session.uncertainty(samples=4)
    mean, entropy = result.full("probability", volume.shape), result.full("entropy", volume.shape)
    assert session.encoder_runs == 1 and session.decoder_runs == 1
    assert result.probability.shape == result.entropy.shape and mean.dtype == np.float32
    assert mean.min() >= 0 and mean.max() <= 1 and entropy.min() >= 0 and entropy.max() <= 1
    assert entropy.max() > 0


def test_object_larger_than_one_roi_grows_into_neighbours(intensity_model):
    """A 330 mm long rod: one 192 mm ROI cuts it; growing across ROI faces recovers all of it."""
    shape, spacing = (400, 60, 40), (1.0, 1.5, 2.0)
    probe = Volume(np.zeros(shape, np.float32), np.array(spacing), np.zeros(3), np.eye(3))
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), -1)
    world = probe.index_to_world(grid)
    rod = (np.abs(world[..., 0] - 200) < 165) & (np.hypot(world[..., 1] - 45, world[..., 2] - 40) < 15)
    volume = probe.with_array(np.where(rod, 200.0, 40.0).astype(np.float32))
    results = {}
    for max_rois in (1, 4):
        session = Session(intensity_model, max_rois=max_rois)
        session.set_image(volume)
        session.add_click((200, 30, 20))
        results[max_rois] = (dice(session.mask(), rod), session.encoder_runs)
    assert results[1][1] == 1 and results[1][0] < 0.8
    assert results[4][1] == 3 and results[4][0] > 0.9, results


def test_growth_seeds_the_interior_most_voxel_of_the_overlap_and_only_for_wanted_neighbours(monkeypatch):
    """The seed's distance transform on the overlap's bounding box gives the voxel of the whole
    transform; a neighbour the caller does not want costs no transform."""
    from scipy import ndimage

    from fastsam3d.engine import prompts3d
    from fastsam3d.engine.roi import RoiGrid

    generator = np.random.default_rng(3)
    for _ in range(20):
        mask = ndimage.binary_dilation(generator.random((32, 32, 32)) > 0.995, iterations=int(generator.integers(1, 5)))
        mask[:, :, : int(generator.integers(0, 30))] = False
        if not mask.any():
            continue
        whole = ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1, 1:-1]
        expected = np.unravel_index(np.argmax(whole), whole.shape)
        assert tuple(prompts3d._interior_most(mask).astype(int)) == expected

    roi = RoiGrid((200, 200, 200), (0, 1, 2), (50.0, 50.0, 50.0), (1.0, 1.0, 1.0), size=64)
    logits = -torch.ones(1, 1, 16, 16, 16)
    logits[0, 0, 4:12, 4:12, 8:] = 1.0  # reaches the +axis-2 face only
    transforms = []
    interior_most = prompts3d._interior_most
    monkeypatch.setattr(prompts3d, "_interior_most", lambda mask: transforms.append(1) or interior_most(mask))
    assert list(prompts3d.growth(roi, logits, lambda neighbour: False)) == [] and not transforms
    ((neighbour, seed, prompt),) = prompts3d.growth(roi, logits)
    assert neighbour == roi.neighbour(2, 1) and len(transforms) == 1
    assert seed.index == (79.5, 79.5, 95.5)  # low-res cell (7, 7, 11), the first of the block's centre (4 cells deep)
    assert (prompt[0, 0, 4:12, 4:12, :8] == 1).all() and (prompt[0, 0, :, :, 8:] == 0).all()


def test_a_click_pastes_only_the_rois_it_lies_in(intensity_model, monkeypatch):
    """The rod in 3 ROIs: an exclude click near its end lies in one of them; only that ROI is decoded
    and pasted again, the others keep their masks, and the label map is the one pasted from scratch
    (also after undo and redo)."""
    from fastsam3d.engine.roi import RoiGrid

    shape, spacing = (400, 60, 40), (1.0, 1.5, 2.0)
    rod = np.zeros(shape, bool)
    rod[35:365, 20:40, 12:28] = True
    volume = Volume(np.where(rod, 200.0, 40.0).astype(np.float32), np.array(spacing), np.zeros(3), np.eye(3))
    session = Session(intensity_model, max_rois=4)
    session.set_image(volume)
    session.add_click((200, 30, 20))
    grown = session.mask()
    rois = [roi for roi, _ in session.objects[1].state.logits]
    assert len(rois) == 3 and sum(roi.contains(np.array([20.0, 30, 20]))[0] for roi in rois) == 1
    pasted = []
    paste_mask = RoiGrid.paste_mask
    monkeypatch.setattr(RoiGrid, "paste_mask", lambda roi, logits: pasted.append(roi) or paste_mask(roi, logits))
    session.add_click((20, 30, 20), positive=False)
    assert session.decoder_runs == 4 and len(pasted) == 1 and pasted[0].contains(np.array([20.0, 30, 20]))[0]
    corrected = session.mask()
    assert np.array_equal(session.label_map() > 0, corrected) and not np.array_equal(corrected, grown)
    session._pastes.clear()
    session._region_cache.clear()
    assert np.array_equal(session.mask(), corrected) and len(pasted) == 4  # all three pasted from scratch
    session.undo()
    assert np.array_equal(session.label_map() > 0, grown)
    session.redo()
    assert np.array_equal(session.label_map() > 0, corrected)


def test_click_far_away_opens_a_second_roi(intensity_model):
    volume, _ = sphere_volume(shape=(300, 100, 44), spacing=(0.9, 1.2, 3.0))
    session = Session(intensity_model, max_rois=2)
    session.set_image(volume)
    session.add_click((40, 50, 22))
    session.add_click((280, 50, 22))
    assert session.encoder_runs == 2 and len(session.objects[1].state.logits) == 2


@pytest.mark.parametrize(
    "point,message",
    [
        ((-1, 5, 5), "outside the volume"),
        ((5, 5, 44), "outside the volume"),
        ((np.nan, 1, 1), "finite"),
        ((1, 2), "three"),
    ],
)
def test_bad_clicks(intensity_model, point, message):
    volume, _ = sphere_volume()
    session = Session(intensity_model)
    session.set_image(volume)
    with pytest.raises(PromptError, match=message):
        session.add_click(point)
    assert session.encoder_runs == 0


def test_bad_box_mask_and_state(intensity_model):
    volume, _ = sphere_volume()
    session = Session(intensity_model)
    with pytest.raises(PromptError, match="no image"):
        session.add_click((1, 1, 1))
    session.set_image(volume)
    with pytest.raises(PromptError, match="no extent"):
        session.set_box((10, 10, 10), (20, 10, 10))  # a line: flat along two axes
    with pytest.raises(PromptError, match="depth"):
        session.set_box((10, 10, 10), (20, 20, 10), depth_mm=float("nan"))
    session.set_box((10, 10, 20), (30, 20, 20))  # drawn on a slice: as deep as its sides' mean, 15.6 mm
    low, high = session.objects[1].state.box
    assert (high[2] - low[2]) * volume.spacing[2] == pytest.approx((20 * 0.9 + 10 * 1.2) / 2, abs=volume.spacing[2])
    session.remove_object(1)
    with pytest.raises(PromptError, match="empty"):
        session.set_mask(np.zeros(volume.shape, bool))
    with pytest.raises(PromptError, match="shape"):
        session.set_mask(np.ones((3, 3, 3), bool))
    with pytest.raises(PromptError, match="no object 7"):
        session.undo(7)
    with pytest.raises(VolumeError, match="NaN"):
        bad = volume.array.copy()
        bad[0, 0, 0] = np.nan
        session.set_image(volume.with_array(bad))


def test_undo_history_is_bounded(intensity_model):
    from fastsam3d.engine.session3d import Session

    volume, truth = sphere_volume()
    session = Session(intensity_model, device="cpu")
    session.set_image(volume)
    label = session.add_object()
    session.objects[label].max_history = 3
    centre = np.argwhere(truth).mean(0)
    for offset in range(6):
        session.add_click(centre + [offset, 0, 0])
    obj = session.objects[label]
    assert len(obj.history) == 4 and obj.position == 3 and len(obj.state.clicks) == 6
    assert sum(session.undo() is not None for _ in range(10)) == 3  # only the kept steps can be undone
    assert len(session.objects[label].state.clicks) == 3


def test_needs_encoder_tells_cached_clicks_apart(intensity_model):
    from fastsam3d.engine.session3d import Session

    volume, truth = sphere_volume()
    session = Session(intensity_model, device="cpu", max_rois=1)
    session.set_image(volume)
    centre = np.argwhere(truth).mean(0)
    assert session.needs_encoder(centre)  # nothing cached yet
    session.add_click(centre)
    assert not session.needs_encoder(centre + [3, 0, 0])
    assert not session.needs_encoder([0, 0, 0])  # this small volume lies inside the first ROI
    session.set_image(volume)  # a new image clears the cache
    session.add_object()
    assert session.needs_encoder(centre)


def test_several_clicks_are_one_interaction_and_one_decoder_pass(intensity_model):
    volume, _ = sphere_volume()
    session = Session(intensity_model, max_rois=1)
    session.set_image(volume)
    session.add_clicks([(60, 50, 22), (62, 48, 22), (58, 52, 21)], [True, True, False])
    assert session.decoder_runs == 1 and len(session.objects[session.active].state.clicks) == 3
    assert session.undo() and not session.mask().any() and not session.undo()
    with pytest.raises(PromptError, match="outside the volume"):
        session.add_clicks([(60, 50, 22), (999, 0, 0)], [True, True])
    assert session.decoder_runs == 1  # nothing applied: every point is checked first


def test_embedding_cache_is_bounded_in_megabytes():
    model = build_model("tiny-student")
    volume, _ = sphere_volume()
    session = Session(model, max_rois=1, cache_size=8)
    session.set_image(volume)
    session.add_click((20, 20, 10))
    one = session.cached_bytes()
    session.predictor.cache_bytes = int(1.5 * one)  # room for one embedding and a half
    session.add_object()
    session.add_click((100, 80, 35))
    assert len(session.predictor._embeddings) == 1 and session.cached_bytes() == one
