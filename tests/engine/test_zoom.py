"""The engine's zoom: objects start in the model's fine ROI and move to the coarse one when their
mask reaches the fine ROI's faces, or when include clicks are stranded there; clicks on a cached
ROI stay decoder passes at either scale."""

import numpy as np

from fastsam3d.clicks import center_click, dice
from fastsam3d.demo import make_phantom
from fastsam3d.engine.prompts3d import Click, clicks_stranded
from fastsam3d.engine.roi import RoiGrid
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


def _two_blobs(gap: int, radius: float = 3.0) -> tuple[np.ndarray, np.ndarray]:
    """A 64³ low-res mask of two balls ``gap`` cells apart along axis 0, and their centres."""
    centres = np.array([[20.0, 32.0, 32.0], [20.0 + gap, 32.0, 32.0]])
    grid = np.stack(np.meshgrid(*[np.arange(64)] * 3, indexing="ij"), -1)
    mask = np.zeros((64,) * 3, bool)
    for centre in centres:
        mask |= np.linalg.norm(grid - centre, axis=-1) <= radius
    return mask, centres


def test_include_clicks_left_in_small_separate_parts_are_stranded():
    roi = RoiGrid((64, 64, 64), (0, 1, 2), (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), size=64)
    mask, centres = _two_blobs(gap=20)
    clicks = [Click(tuple(c)) for c in centres]
    assert clicks_stranded(roi, mask, clicks)
    assert not clicks_stranded(roi, mask, clicks[:1])  # one click: nothing to join
    assert clicks_stranded(roi, mask, [*clicks, Click((60.0, 60.0, 60.0))])  # a click outside the mask's box
    assert not clicks_stranded(roi, mask, [clicks[0], Click(tuple(centres[1]), positive=False)])
    joined, _ = _two_blobs(gap=4)  # the two balls overlap: one part
    assert not clicks_stranded(roi, joined, clicks)
    large, _ = _two_blobs(gap=30, radius=8.0)  # parts the model grew: it saw something there
    assert not clicks_stranded(roi, large, [Click(tuple(c)) for c in _two_blobs(gap=30)[1]])


def test_a_click_inside_an_organ_larger_than_the_fine_roi_zooms_out_on_the_second_click():
    volume, masks = make_phantom()  # the demo's liver: a homogeneous ellipsoid wider than the 96 mm ROI
    liver = masks["liver"]
    session = Session("default", precision="fp32")
    session.set_image(volume)
    session.add_object("liver")
    point, _ = center_click(session.mask(), liver, volume.spacing)
    session.add_click(point)
    assert _spacings_of(session.objects[1], volume) == {1.5}  # the shipped model sees no boundary there
    assert dice(session.mask(), liver) < 0.1
    point, _ = center_click(session.mask(), liver, volume.spacing)
    session.add_click(point)
    assert _spacings_of(session.objects[1], volume) == {3.0}
    assert dice(session.mask(), liver) > 0.6  # 0.75 when measured
