import numpy as np
import pytest
from scipy import ndimage

from fastsam3d.data.procedural import MIN_VOXELS, lesion, thin_sheet, vessel_tree

SIZE = 48


def _masks(generator, size: int, spacing_mm: float, seed: int) -> tuple[np.ndarray, ...]:
    """The generator's masks as a tuple (lesion gives two: the lesion and its rim)."""
    out = generator(size, spacing_mm, np.random.default_rng(seed))
    return out if isinstance(out, tuple) else (out,)


def _central_cube(size: int) -> tuple[slice, ...]:
    side = size // 4
    start = (size - side) // 2
    return (slice(start, start + side),) * 3


def _depth_mm(mask: np.ndarray, spacing_mm: float) -> np.ndarray:
    """Distance (mm) of each voxel to the nearest voxel outside the mask, the crop's outside included."""
    return ndimage.distance_transform_edt(np.pad(mask, 1), sampling=spacing_mm)[1:-1, 1:-1, 1:-1]


def _touches_border(mask: np.ndarray) -> bool:
    return any(mask.take(index, axis).any() for axis in range(3) for index in (0, -1))


@pytest.mark.parametrize("generator", [vessel_tree, lesion, thin_sheet])
def test_generators_are_deterministic_and_well_formed(generator):
    first, again, other = (_masks(generator, SIZE, 1.5, seed) for seed in (0, 0, 1))
    for mask in first + other:
        assert mask.shape == (SIZE,) * 3 and mask.dtype == bool
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert not np.array_equal(first[0], other[0])
    assert first[0].sum() >= MIN_VOXELS


@pytest.mark.parametrize("spacing_mm", [1.5, 3.0])
@pytest.mark.parametrize("generator", [vessel_tree, lesion, thin_sheet])
def test_structures_pass_through_the_central_cube(generator, spacing_mm):
    for seed in range(20):
        mask = _masks(generator, SIZE, spacing_mm, seed)[0]
        assert mask[_central_cube(SIZE)].any(), seed
        assert mask.sum() >= MIN_VOXELS, seed


def test_tiny_crops_still_give_enough_voxels():
    for generator in (vessel_tree, lesion, thin_sheet):
        for seed in range(10):
            mask = _masks(generator, 8, 3.0, seed)[0]
            assert mask.sum() >= MIN_VOXELS and mask[_central_cube(8)].any(), (generator.__name__, seed)


def test_vessel_trees_range_from_thin_to_thick_and_branch():
    diameters_mm, surface_crossings = [], []
    for seed in range(30):
        tree = vessel_tree(SIZE, 1.0, np.random.default_rng(seed))
        assert ndimage.label(tree)[1] == 1, seed  # one face-connected tree, even where one voxel wide
        diameters_mm.append(2 * _depth_mm(tree, 1.0).max())
        on_surface = tree.copy()
        on_surface[1:-1, 1:-1, 1:-1] = False
        surface_crossings.append(ndimage.label(on_surface, np.ones((3, 3, 3)))[1])
    assert min(diameters_mm) < 3 and max(diameters_mm) > 10
    assert max(surface_crossings) >= 3  # a single tube enters and leaves once: branches cross the crop's surface too


@pytest.mark.parametrize("spacing_mm", [1.5, 3.0])
def test_lesions_have_drawn_sizes_and_thin_rims(spacing_mm):
    diameters_mm, rims = [], 0
    for seed in range(30):
        blob, rim = lesion(SIZE, spacing_mm, np.random.default_rng(seed))
        assert ndimage.label(blob)[1] == 1, seed
        assert not (rim & ~blob).any(), seed
        if not _touches_border(blob):
            diameters_mm.append((6 * blob.sum() / np.pi) ** (1 / 3) * spacing_mm)
        if rim.any():
            rims += 1
            assert _depth_mm(blob, spacing_mm)[rim].max() <= 4 + spacing_mm, seed
            assert blob.sum() < 100 or rim.sum() < blob.sum(), seed  # a big lesion is more than its rim
    assert 4 * 0.8 <= min(diameters_mm) < 12 and 25 < max(diameters_mm) <= 60 * 1.2
    assert 0 < rims < 30


@pytest.mark.parametrize("spacing_mm", [1.0, 1.5, 3.0])
def test_thin_sheets_are_thin(spacing_mm):
    depths_mm = [
        _depth_mm(thin_sheet(SIZE, spacing_mm, np.random.default_rng(seed)), spacing_mm).max() for seed in range(20)
    ]
    assert max(depths_mm) <= 2.5 + spacing_mm  # half of at most 4 mm, plus the voxel itself
    if spacing_mm == 1.0:
        assert max(depths_mm) >= 2  # not all one voxel thick: thicknesses reach 3–4 mm
