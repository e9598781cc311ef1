"""The engine's zoom: objects start in the model's fine ROI and move to the coarse one when their
mask reaches the fine ROI's faces; clicks on a cached ROI stay decoder passes at either scale."""

import numpy as np

from fastsam3d.clicks import dice
from fastsam3d.engine.session3d import Session
from fastsam3d.io import Volume

from ..helpers import IntensityModel


class TwoScaleModel(IntensityModel):
    """The bright-region stand-in, trained (as it were) at 0.5 and 1 mm ROIs (64 and 128 mm wide)."""

    roi_spacing = 1.0
    roi_spacings = (0.5, 1.0)


def _ball(radius_mm: float, spacing: float = 0.8) -> tuple[Volume, np.ndarray]:
    """A bright ball in a 160 mm cube (0.8 mm voxels: finer than the coarse ROI, so zoom applies)."""
    shape = (int(160 / spacing),) * 3
    axis = (np.arange(shape[0]) - shape[0] / 2) * spacing
    distance = np.sqrt(axis[:, None, None] ** 2 + axis[None, :, None] ** 2 + axis[None, None, :] ** 2)
    inside = distance < radius_mm
    image = np.where(inside, 200.0, 40.0).astype(np.float32)
    return Volume(image, (spacing,) * 3, np.zeros(3), np.eye(3)), inside


def _roi_spacings(session: Session, volume: Volume) -> set[float]:
    return _spacings_of(session.objects[1], volume)


def _spacings_of(obj, volume: Volume) -> set[float]:
    return {round(abs(roi.step[0]) * volume.spacing[0], 6) for roi, _ in obj.state.logits}


def test_a_small_object_stays_in_the_fine_roi():
    volume, truth = _ball(10.0)
    session = Session(TwoScaleModel())
    session.set_image(volume)
    session.add_click(np.array(volume.shape) // 2)
    assert _roi_spacings(session, volume) == {0.5} and session.encoder_runs == 1
    assert dice(session.mask(), truth) > 0.9


def test_a_large_object_zooms_out_once_and_further_clicks_reuse_the_coarse_features():
    volume, truth = _ball(45.0)
    session = Session(TwoScaleModel(), max_rois=1)
    session.set_image(volume)
    session.add_click(np.array(volume.shape) // 2)
    assert _roi_spacings(session, volume) == {1.0} and session.encoder_runs == 2  # fine, then coarse
    assert dice(session.mask(), truth) > 0.9
    session.add_click(np.array(volume.shape) // 2 + 25)
    assert session.encoder_runs == 2 and _roi_spacings(session, volume) == {1.0}
    session.undo()
    session.undo()
    assert not session.objects[1].state.logits


def test_zoom_off_or_a_coarse_volume_keeps_the_coarse_roi():
    volume, _ = _ball(10.0)
    session = Session(TwoScaleModel(), zoom=False)
    session.set_image(volume)
    session.add_click(np.array(volume.shape) // 2)
    assert _roi_spacings(session, volume) == {1.0}
    coarse_volume, _ = _ball(10.0, spacing=2.0)  # no detail at 0.5 mm: nothing to zoom into
    session = Session(TwoScaleModel())
    session.set_image(coarse_volume)
    session.add_click(np.array(coarse_volume.shape) // 2)
    assert _roi_spacings(session, coarse_volume) == {1.0}


def test_a_box_larger_than_the_fine_roi_starts_coarse():
    volume, truth = _ball(10.0)
    centre = np.array(volume.shape) // 2
    session = Session(TwoScaleModel())
    session.set_image(volume)
    session.set_box(centre - 50, centre + 50)
    assert _roi_spacings(session, volume) == {1.0} and session.encoder_runs == 1
    small = session.add_object()
    session.set_box(centre - 12, centre + 12, label=small)
    assert _spacings_of(session.objects[small], volume) == {0.5}
    assert dice(session.mask(small), truth) > 0.9
