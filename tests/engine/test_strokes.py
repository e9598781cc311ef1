"""Scribble and lasso prompts: rasterisation, bad strokes, and both engines honouring them."""

from __future__ import annotations

import numpy as np
import pytest

from fastsam3d.clicks import dice
from fastsam3d.engine.session2d import SliceSession
from fastsam3d.engine.session3d import Session
from fastsam3d.engine.strokes import lasso, scribble
from fastsam3d.errors import PromptError
from fastsam3d.modeling.click_unet import ClickUNet3D, ClickUNetConfig

from ..helpers import BrightInBox, ellipsoid_volume, randomise, sphere_volume


def test_scribble_covers_every_voxel_along_its_segments():
    stroke = scribble(np.array([[2.0, 3.0, 4.0], [12.0, 3.0, 4.0], [12.0, 9.0, 7.0]]), True, (20, 20, 20))
    assert stroke.voxels[0].tolist() == [2, 3, 4] and stroke.voxels[-1].tolist() == [12, 9, 7]
    steps = np.abs(np.diff(stroke.voxels, axis=0)).max(1)
    assert steps.max() == 1  # 26-connected: no gaps
    assert len(np.unique(stroke.voxels, axis=0)) == len(stroke.voxels)


def test_lasso_fills_its_polygon_on_its_slice():
    square = np.array([[2.0, 2.0, 5.0], [2.0, 11.0, 5.0], [11.0, 11.0, 5.0], [11.0, 2.0, 5.0]])
    stroke = lasso(square, True, (20, 20, 20))
    assert stroke.axis == 2 and stroke.slice_index == 5
    assert len(stroke.voxels) == 100 and set(stroke.voxels[:, 2]) == {5}
    band = stroke.outline_band((20, 20, 20), 1.0, 3.0)
    assert len(band) and set(band[:, 2]) == {5}
    assert not {tuple(v) for v in band} & {tuple(v) for v in stroke.voxels}


@pytest.mark.parametrize(
    ("verb", "points", "message"),
    [
        ("add_scribble", [], "three coordinates"),
        ("add_scribble", [(10, 10, 10)], "at least 2 points"),
        ("add_scribble", [(10, 10, 10), (500, 10, 10)], "outside the volume"),
        ("add_scribble", [(10, 10, float("nan")), (12, 10, 10)], "finite"),
        ("add_scribble", np.zeros((1_000_000, 3)), "at most 10000 points"),
        ("add_lasso", [(10, 10, 10), (20, 10, 10)], "at least 3 points"),
        ("add_lasso", [(10, 10, 10), (20, 10, 11), (20, 20, 12)], "one slice"),
        ("add_lasso", [(10, 10, 10), (20, 10, 10), (30, 10, 10)], "one line"),
        ("add_lasso", [(10, 10, 10), (20, 20, 10), (20, 10, 10), (10, 20, 10)], "cross itself"),
        ("add_lasso", [(10, 10, 10), (10.2, 10, 10), (10, 10.2, 10)], "no area"),
    ],
)
def test_bad_strokes_are_refused_and_nothing_is_applied(intensity_model, verb, points, message):
    session = Session(intensity_model, device="cpu")
    session.set_image(sphere_volume()[0])
    with pytest.raises(PromptError, match=message):
        getattr(session, verb)(points)
    assert not session.objects  # a refused first prompt creates no object
    session.add_click((60, 50, 22))
    history = len(session.objects[1].history)
    with pytest.raises(PromptError, match=message):
        getattr(session, verb)(points)
    assert len(session.objects[1].history) == history


def _default_like_session(volume) -> Session:
    """A small randomly initialised click-unet: what the engine guarantees must hold for any weights."""
    model = ClickUNet3D(ClickUNetConfig(channels=(8, 8, 8), prompt_channels=(8, 8, 8), fine_channels=8))
    randomise(model, seed=3)
    return Session(model, device="cpu")


def test_dense_prompt_model_honours_every_stroke_voxel_and_undoes_in_one_step():
    volume, inside = sphere_volume()
    session = _default_like_session(volume)
    session.set_image(volume)
    centre = np.argwhere(inside).mean(0).round()
    line = [centre - (12, 0, 0), centre + (0, 10, 0), centre + (10, 0, 2)]
    session.add_scribble(line)
    stroke = session.objects[1].state.strokes[0]
    assert session.mask()[tuple(stroke.voxels.T)].mean() >= 0.99
    session.add_scribble([centre + (0, 0, 3), centre + (8, 8, 3)], positive=False)
    negative = session.objects[1].state.strokes[1]
    assert not session.mask()[tuple(negative.voxels.T)].any()  # the later stroke wins where they meet
    outline = [centre + (-8, -8, 0), centre + (-8, 8, 0), centre + (8, 8, 0), centre + (8, -8, 0)]
    session.add_lasso(outline)
    area = session.objects[1].state.strokes[2]
    assert session.mask()[tuple(area.voxels.T)].mean() >= 0.99
    assert len(session.objects[1].history) == 4
    session.undo()
    assert len(session.objects[1].state.strokes) == 2


def test_sparse_prompt_model_gets_a_few_points_per_stroke(intensity_model):
    volume, inside = sphere_volume()
    session = Session(intensity_model, device="cpu")
    session.set_image(volume)
    centre = np.argwhere(inside).mean(0).round()
    outline = [centre + (-6, -6, 0), centre + (-6, 6, 0), centre + (6, 6, 0), centre + (6, -6, 0)]
    session.add_lasso(outline)
    roi = session.objects[1].state.logits[0][0]
    points, labels = session._prompts(session.objects[1].state, roi)
    assert 1 <= len(points) <= 5 and set(labels) == {1}
    assert dice(session.mask(), inside) > 0.9  # the stand-in segments the bright sphere


def test_slice_engine_takes_a_lasso_and_a_scribble():
    volume, inside = ellipsoid_volume()
    session = SliceSession(BrightInBox(), device="cpu")
    session.set_image(volume)
    rows = np.argwhere(inside[:, :, 10])
    low, high = rows.min(0), rows.max(0)
    outline = [(low[0], low[1], 10), (low[0], high[1], 10), (high[0], high[1], 10), (high[0], low[1], 10)]
    session.add_lasso(outline)
    mask = session.mask()
    assert mask[:, :, 10][tuple(rows.T)].mean() >= 0.99
    assert np.nonzero(mask.any(axis=(0, 1)))[0].tolist() == list(range(6, 15))  # propagated up and down
    with pytest.raises(PromptError, match="across axis 2"):
        session.add_lasso([(20, 5, 5), (20, 20, 5), (20, 20, 20)])
    session.add_scribble([(20, 15, 12), (20, 15, 14)], positive=False)
    assert not session.mask()[20, 15, 12:15].any()
    assert len(session.objects[1].history) == 3


def test_each_object_reports_its_volume_in_ml(intensity_model):
    volume, inside = sphere_volume()
    session = Session(intensity_model, device="cpu")
    session.set_image(volume)
    session.add_click(np.argwhere(inside).mean(0).round())
    voxel_ml = float(np.prod(volume.spacing)) / 1000
    assert session.volume_ml() == pytest.approx(session.mask().sum() * voxel_ml)
    session.undo()
    assert session.volume_ml() == 0.0
