import numpy as np
import pytest
import SimpleITK as sitk
import torch
import torch.nn.functional as F

from fastsam3d.engine import roi as preprocess
from fastsam3d.engine.roi import RoiGrid, canonical_axes, normalise_intensity, upsampling_weights
from fastsam3d.io import Volume

from ..helpers import rotation


def _oblique_volume(shape=(90, 70, 40), spacing=(0.8, 1.1, 2.5)) -> Volume:
    rng = np.random.default_rng(0)
    array = rng.normal(50, 20, size=shape).astype(np.float32)
    # Permute axes too: input axis 0 runs roughly S, axis 1 roughly R, axis 2 roughly P.
    direction = rotation(15, 10) @ np.array([[0, -1, 0], [0, 0, 1], [1, 0, 0]], dtype=float)
    return Volume(array, np.array(spacing), np.array([-20.0, 35.0, 12.0]), direction)


def _roi_image(roi: RoiGrid, volume: Volume) -> sitk.Image:
    """The ROI as an ITK image geometry: origin at ROI voxel 0, RAS-ordered axes."""
    origin = volume.index_to_world(roi.roi_to_index(np.zeros((1, 3)))[0])
    direction = np.stack([volume.direction[:, roi.axes[a]] * np.sign(roi.step[a]) for a in range(3)], axis=1)
    reference = sitk.Image([roi.size] * 3, sitk.sitkFloat32)
    reference.SetOrigin(origin.tolist())
    reference.SetSpacing([1.5] * 3)
    reference.SetDirection(direction.flatten().tolist())
    return reference


def test_canonical_axes():
    assert canonical_axes(np.eye(3)) == ((0, 1, 2), (-1, -1, 1))  # LPS input
    assert canonical_axes(np.diag([-1.0, -1.0, 1.0])) == ((0, 1, 2), (1, 1, 1))  # RAS input
    axes, _ = canonical_axes(_oblique_volume().direction)
    assert axes == (1, 2, 0)


def test_roi_direction_is_ras_like():
    volume = _oblique_volume()
    roi = RoiGrid.centred(volume, np.array([40.0, 30.0, 20.0]))
    origin = volume.index_to_world(roi.roi_to_index(np.zeros((1, 3)))[0])
    ends = [volume.index_to_world(roi.roi_to_index(np.eye(3)[a : a + 1] * 10)[0]) - origin for a in range(3)]
    ras = [np.array([-1, 0, 0]), np.array([0, -1, 0]), np.array([0, 0, 1])]  # R, A, S in LPS
    for a in range(3):
        assert ends[a] @ ras[a] > 0.8 * np.linalg.norm(ends[a])
        assert np.isclose(np.linalg.norm(ends[a]), 15.0)  # 10 voxels of 1.5 mm


def test_centre_voxel_lands_on_click():
    volume = _oblique_volume()
    click = np.array([40.0, 30.0, 20.0])
    roi = RoiGrid.centred(volume, click)
    assert np.allclose(roi.index_to_roi(click), 64)
    assert np.allclose(roi.roi_to_index(roi.index_to_roi(click)), click)


@pytest.mark.parametrize("slab_voxels", [2**21, 700])  # one slab, or one input slice at a time
@pytest.mark.parametrize("order", ["C", "F"])  # NumPy's layout, or a NIfTI's (Fortran)
def test_extract_matches_itk_linear_resampling(monkeypatch, slab_voxels, order):
    monkeypatch.setattr(preprocess, "EXTRACT_SLAB_VOXELS", slab_voxels)
    volume = _oblique_volume()
    roi = RoiGrid.centred(volume, np.array([45.0, 35.0, 20.0]))
    ours = roi.extract(np.asarray(volume.array, order=order)).numpy()
    resampled = sitk.Resample(volume.to_sitk(), _roi_image(roi, volume), sitk.Transform(), sitk.sitkLinear, 0.0)
    theirs = sitk.GetArrayFromImage(resampled).transpose(2, 1, 0)
    inside = theirs != 0  # ITK's notion of 'inside' at the very border differs by half a voxel
    assert inside.mean() > 0.05
    assert np.allclose(ours[inside], theirs[inside], atol=1e-3)
    assert (ours[~inside] == 0).mean() > 0.99


def test_paste_matches_upsample_then_itk_resample():
    volume = _oblique_volume()
    roi = RoiGrid.centred(volume, np.array([45.0, 35.0, 20.0]))
    low = torch.randn(32, 32, 32)
    box, pasted = roi.paste_logits(low)
    full = F.interpolate(low[None, None], size=(128,) * 3, mode="trilinear", align_corners=False)[0, 0]
    roi_image = sitk.GetImageFromArray(full.numpy().transpose(2, 1, 0))
    roi_image.CopyInformation(_roi_image(roi, volume))
    back = sitk.Resample(roi_image, volume.to_sitk(), sitk.Transform(), sitk.sitkLinear, np.nan, sitk.sitkFloat32)
    theirs = sitk.GetArrayFromImage(back).transpose(2, 1, 0)[box]
    assert pasted.shape == theirs.shape
    inside = np.isfinite(theirs)
    assert inside.mean() > 0.9
    assert np.allclose(pasted[inside], theirs[inside], atol=1e-4)
    # nothing of the volume outside the box is inside the ROI
    outside = np.isfinite(sitk.GetArrayFromImage(back).transpose(2, 1, 0))
    outside[box] = False
    assert not outside.any()


def test_upsampling_weights_match_torch():
    low = torch.randn(7)
    ours = torch.from_numpy(upsampling_weights(7, 28)) @ low
    theirs = F.interpolate(low[None, None], size=28, mode="linear", align_corners=False)[0, 0]
    assert torch.allclose(ours, theirs, atol=1e-6)


def test_normalise_intensity_uses_positive_voxels():
    crop = torch.zeros(10, 10, 10)
    crop[:5] = torch.linspace(1, 9, 500).view(5, 10, 10)
    crop[7:] = -torch.linspace(1, 900, 300).view(3, 10, 10)  # negative voxels (air in HU) count as not positive
    normalised = normalise_intensity(crop)
    positive = crop[crop > 0]
    assert torch.allclose(normalised[crop > 0], (positive - positive.mean()) / positive.std(), atol=1e-6)
    assert torch.isfinite(normalise_intensity(torch.full((4, 4, 4), 3.0))).all()
    copy = crop.clone()
    assert normalise_intensity(copy, in_place=True) is copy and torch.equal(copy, normalised)


DEVICES = ["cpu", *(["cuda"] if torch.cuda.is_available() else [])]  # benchmarks/gpu_check.sh runs the cuda case


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("low_res", [32, 64])  # upsampled 4x (rows mixing 3 planes) or 2x; banded products
def test_paste_mask_equals_thresholded_paste_logits(low_res, device):
    volume = _oblique_volume()
    roi = RoiGrid.centred(volume, np.array([45.0, 35.0, 20.0]))
    low = torch.full((low_res,) * 3, -3.0)
    scale = low_res // 32
    low[10 * scale : 14 * scale, 12 * scale : 20 * scale, 15 * scale : 17 * scale] = 4.0
    covered, logits = roi.paste_logits(low)
    box, mask = roi.paste_mask(low.to(device).half())  # on the logits' device, as the history keeps them
    full = np.zeros(volume.shape, bool)
    full[covered] = logits > 0
    pasted = np.zeros(volume.shape, bool)
    pasted[box] = mask
    assert full.any() and np.array_equal(full, pasted)
    assert mask.size < 0.2 * logits.size  # only the positive neighbourhood was computed
    empty_box, empty = roi.paste_mask(torch.full((32, 32, 32), -1.0))
    assert empty.size == 0 and not pasted[empty_box].any()


@pytest.mark.parametrize("low_res", [32, 64])  # dense or banded products before the signs
def test_paste_mask_of_a_large_box_equals_thresholded_paste_logits(low_res):
    """Boxes of ``SIGN_PASTE_MIN_VOXELS`` or more take the signs path (_planes_along_axis_0 for 64³
    logits): a smooth object that crosses the ROI, equal to the thresholded paste up to rounding."""
    volume = _oblique_volume(shape=(200, 160, 60), spacing=(0.8, 0.9, 1.5))
    roi = RoiGrid.centred(volume, np.array([100.0, 80.0, 30.0]))
    generator = torch.Generator().manual_seed(1)
    coarse = torch.randn(1, 1, 6, 6, 6, generator=generator)
    low = F.interpolate(coarse, size=(low_res,) * 3, mode="trilinear", align_corners=False)[0, 0] + 0.1
    covered, logits = roi.paste_logits(low)
    box, mask = roi.paste_mask(low)
    assert mask.size >= preprocess.SIGN_PASTE_MIN_VOXELS
    full = np.zeros(volume.shape, bool)
    full[covered] = logits > 0
    pasted = np.zeros(volume.shape, bool)
    pasted[box] = mask
    decided = np.zeros(volume.shape, bool)
    decided[covered] = np.abs(logits) > 1e-4
    assert 0.2 < full.mean() < 0.9 and decided.mean() > 0.99
    assert np.array_equal(full[decided], pasted[decided])


def test_planes_along_axis_0_equal_the_dense_resampling():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(7, 64, 70, generator=generator)
    across = []
    for rows, inputs in ((90, 64), (50, 70)):
        matrix = torch.zeros(rows, inputs)
        for row in range(rows):
            low = row * (inputs - 3) // rows
            matrix[row, low : low + 3] = torch.rand(3, generator=generator)
        across.append(matrix)
    expected = preprocess.apply_per_axis(logits.permute(1, 2, 0), across)
    planes = preprocess._planes_along_axis_0(logits, *across)
    assert planes.shape == (7, 90, 50) and torch.allclose(planes, expected, atol=1e-5)


def test_signs_of_mixes_equal_the_products_signs():
    """Rows mixing 1, 2 or 3 consecutive planes (and none), on planes with equal neighbours and exact
    zeros: the signs of ``weights @ planes`` wherever the product is not within rounding of 0."""
    rng = np.random.default_rng(0)
    planes = rng.normal(size=(6, 400)).astype(np.float32)
    planes[2, :50] = planes[3, :50]  # a = b: always or never positive
    planes[4, 50:60] = 0.0
    rows = []
    for low, taps in [(0, 1), (0, 2), (0, 2), (1, 3), (1, 3), (2, 2), (3, 2), (3, 2), (3, 3), (4, 2), (5, 1), (5, 1)]:
        for _ in range(3):
            row = np.zeros(6, np.float32)
            row[low : low + taps] = rng.dirichlet(np.ones(taps))
            rows.append(row)
    rows.append(np.zeros(6, np.float32))
    weights = torch.from_numpy(np.stack(rows))
    product = (weights @ torch.from_numpy(planes)).numpy()
    decided = np.abs(product) > 1e-5
    # as a matrix, and as (L, 20, 20) planes laid out as _planes_along_axis_0 leaves them
    strided = torch.from_numpy(planes).view(6, 20, 20).permute(1, 0, 2).contiguous().permute(1, 0, 2)
    for given in (torch.from_numpy(planes), strided):
        signs = np.empty((len(weights), *given.shape[1:]), bool)
        preprocess._signs_of_mixes(weights, given, signs)
        signs = signs.reshape(product.shape)
        assert decided.mean() > 0.95 and np.array_equal(signs[decided], product[decided] > 0)
        assert not signs[-1].any()


@pytest.mark.parametrize("inputs", [16, 64, 80])
def test_banded_products_equal_the_dense_contraction(inputs):
    generator = torch.Generator().manual_seed(0)
    array = torch.randn(inputs, 5, 7, generator=generator).permute(0, 2, 1)  # not contiguous
    banded = torch.zeros(50, inputs)
    for row in range(50):
        low = row * (inputs - 3) // 50
        banded[row, low : low + 3] = torch.rand(3, generator=generator)
    banded[7] = 0.0
    for matrix in (banded, torch.rand(50, inputs, generator=generator)):  # and a dense one: still right
        expected = torch.tensordot(array, matrix, dims=([0], [1]))
        assert torch.allclose(preprocess._contract_first_axis_banded(array, matrix), expected, atol=1e-5)
        assert torch.allclose(preprocess.apply_per_axis(array, [matrix]), expected, atol=1e-5)


def test_paste_mask_of_logits_outside_the_volume_is_empty():
    """A ROI at the volume's corner whose positive logits all lie beyond the volume: nothing to paste."""
    volume = Volume(np.zeros((20, 20, 20), np.float32), (1.0, 1.0, 1.0), np.zeros(3), np.eye(3))
    roi = RoiGrid.centred(volume, np.zeros(3), size=32, spacing=1.0)
    logits = torch.full((32, 32, 32), -5.0)
    outside = [int(np.clip(roi.index_to_roi(np.array([[-8.0, -8.0, -8.0]]))[0, a], 0, 31)) for a in range(3)]
    logits[outside[0], outside[1], outside[2]] = 5.0
    box, mask = roi.paste_mask(logits)
    assert mask.size == 0 and all(s.stop == s.start for s in box)


def test_extract_can_continue_the_border_beyond_the_volume():
    array = np.arange(10, dtype=np.float32)[:, None, None] * np.ones((10, 6, 4), np.float32)
    volume = Volume(
        array, (1.0, 1.0, 1.0), np.zeros(3), np.diag([-1.0, -1.0, 1.0])
    )  # RAS storage: ROI axes = input axes
    roi = RoiGrid.centred(volume, np.array([9.0, 3.0, 2.0]), size=8, spacing=1.0)
    zero, edge = roi.extract(array), roi.extract(array, outside="edge")
    inside = roi.index_to_roi(np.array([[9.0, 3.0, 2.0]]))[0].round().astype(int)
    line_zero, line_edge = zero[:, inside[1], inside[2]], edge[:, inside[1], inside[2]]  # along axis 0, inside on 1, 2
    torch.testing.assert_close(line_zero[: inside[0] + 1], line_edge[: inside[0] + 1])  # inside: the same
    assert (line_zero[inside[0] + 2 :] == 0).all() and (line_edge[inside[0] + 1 :] == 9).all()
