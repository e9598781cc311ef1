"""Box algebra and label-map compositing."""

import mmap
from pathlib import Path

import numpy as np
import pytest

from fastsam3d.engine import labelmap
from fastsam3d.engine.labelmap import (
    LabelMap,
    PackedMask,
    RegionView,
    bounding_box,
    intersection,
    is_empty,
    merge_max,
    relative,
    union_box,
)


def test_box_algebra():
    a = (slice(2, 5), slice(0, 4), slice(1, 2))
    b = (slice(4, 9), slice(3, 6), slice(0, 3))
    assert union_box([a, None, b]) == (slice(2, 9), slice(0, 6), slice(0, 3))
    assert union_box([None, (slice(1, 1), slice(0, 2), slice(0, 2))]) is None  # empty boxes count as nothing
    assert intersection(a, b) == (slice(4, 5), slice(3, 4), slice(1, 2))
    assert is_empty(intersection(a, (slice(6, 8), slice(0, 4), slice(1, 2))))
    assert relative(intersection(a, b), a) == (slice(2, 3), slice(3, 4), slice(0, 1))
    mask = np.zeros((6, 7, 8), bool)
    mask[1:3, 4, 2:7] = True
    assert bounding_box(mask) == (slice(1, 3), slice(4, 5), slice(2, 7))
    assert bounding_box(np.zeros((3, 3, 3), bool)) is None


def test_bounding_box_equals_the_extent_of_the_nonzero_coordinates():
    rng = np.random.default_rng(0)
    for shape in [(9, 11, 13), (5, 7), (12,), (1, 1, 1)]:
        for density in (0.001, 0.05, 1.0):
            mask = (rng.random(shape) < density).astype(np.uint8) * 3  # label values, not just booleans
            coordinates = np.nonzero(mask)
            expected = tuple(slice(int(c.min()), int(c.max()) + 1) for c in coordinates) if mask.any() else None
            assert bounding_box(mask) == expected
    assert bounding_box(np.zeros((0, 4, 4), bool)) is None


def test_repaint_only_inside_the_box_with_the_higher_label_winning():
    labels = LabelMap((6, 6, 6))
    labels.array[5, 5, 5] = 9  # outside the repainted box: left alone
    one = ((slice(0, 4), slice(0, 4), slice(0, 4)), np.ones((4, 4, 4), bool))
    two = ((slice(2, 6), slice(2, 6), slice(2, 6)), np.ones((4, 4, 4), bool))
    labels.repaint((slice(0, 5), slice(0, 5), slice(0, 5)), [(1, *one), (2, *two)])
    assert labels.array[0, 0, 0] == 1 and labels.array[3, 3, 3] == 2 and labels.array[5, 5, 5] == 9
    assert labels.array[4, 4, 4] == 2 and labels.array[5, 4, 4] == 0
    labels.make_room(300)
    assert labels.array.dtype == np.uint16 and labels.array[3, 3, 3] == 2 and labels.array[5, 5, 5] == 9
    assert labels.array.flags.writeable and labels.array[5, 4, 4] == 0


def test_a_fresh_label_map_is_writable_zeros_without_huge_pages():
    """The map lives in its own anonymous mapping, advised against transparent huge pages (NumPy
    asks for them on arrays of 4 MB or more), so that only the pages a repaint writes become resident."""
    labels = LabelMap((64, 256, 512))  # 8 MB
    assert labels.array.shape == (64, 256, 512) and labels.array.dtype == np.uint8
    assert labels.array.flags.writeable and not labels.array.any()
    labels.array[10, 20, 30] = 4
    assert labels.array.sum() == 4
    if hasattr(mmap, "MADV_NOHUGEPAGE"):
        assert _huge_pages_allowed(labels.array) in (False, None)  # None: the kernel does not say


def _huge_pages_allowed(array: np.ndarray) -> bool | None:
    """Whether the kernel may back the mapping under ``array`` with transparent huge pages
    (``THPeligible`` in /proc/self/smaps); None where it does not say."""
    address = array.__array_interface__["data"][0] + array.nbytes // 2  # NumPy advises from a 2 MB boundary on
    mapping = None
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = line.split()[0]
        if "-" in head and ":" not in head:
            low, high = (int(bound, 16) for bound in head.split("-"))
            mapping = low <= address < high
        elif mapping and line.startswith("THPeligible:"):
            return line.split()[1] == "1"
    return None


@pytest.mark.parametrize("planes", [32, 2])
def test_repaints_in_sequence_equal_composing_every_object_afresh(monkeypatch, planes):
    """Each repaint clears only where earlier repaints wrote and paints only mask voxels; after any
    sequence the map must equal the maximum of label x mask over the objects, composed from zero,
    and the answer is the box of the voxels that changed (also when repainting a few planes at a time)."""
    monkeypatch.setattr(labelmap, "REPAINT_PLANES", planes)
    rng = np.random.default_rng(0)
    shape = (12, 10, 9)
    labels, objects = LabelMap(shape), {}
    for _ in range(40):
        label = int(rng.integers(1, 4))
        low = rng.integers(0, (9, 7, 6))
        box = tuple(slice(int(a), int(a + rng.integers(1, 4))) for a in low)
        old = objects.get(label)
        objects[label] = (box, rng.random(tuple(s.stop - s.start for s in box)) > 0.4)
        changed = union_box([box, None if old is None else old[0]])
        before = labels.array.copy()
        answer = labels.repaint(changed, [(k, *v) for k, v in objects.items()])
        assert answer == bounding_box(labels.array != before)
        expected = np.zeros(shape, np.uint8)
        for k, (piece_box, piece) in objects.items():
            np.maximum(expected[piece_box], piece * np.uint8(k), out=expected[piece_box])
        np.testing.assert_array_equal(labels.array, expected)


def test_merge_max_composes_overlapping_pieces():
    box = (slice(0, 3), slice(0, 1), slice(0, 1))
    pieces = [
        ((slice(0, 2), slice(0, 1), slice(0, 1)), np.array([[[0.2]], [[0.9]]], np.float32)),
        ((slice(1, 3), slice(0, 1), slice(0, 1)), np.array([[[0.5]], [[0.4]]], np.float32)),
    ]
    np.testing.assert_allclose(merge_max(pieces, box)[:, 0, 0], [0.2, 0.9, 0.4])


def test_packed_masks_compress_losslessly_and_read_as_windows():
    rng = np.random.default_rng(0)
    i, j, k = np.ogrid[:20, :30, :40]
    mask = (i - 9) ** 2 + (j - 16) ** 2 + (k - 21) ** 2 < 49  # a ball: compresses well
    mask[4:8, 8:12, 10:14] = rng.random((4, 4, 4)) < 0.3  # and a corner that does not
    packed = PackedMask.of(mask)
    compressed = packed.compress()
    assert compressed.compressed and compressed.bits.nbytes < packed.bits.nbytes
    assert compressed.compress() is compressed
    assert np.array_equal(compressed.packed_bits(), packed.bits)
    view = RegionView(mask.shape, compressed.region())
    for box in [(slice(0, 20), slice(0, 30), slice(0, 40)), (slice(2, 6), slice(20, 30), slice(30, 40))]:
        assert np.array_equal(view[box], mask[box])
    assert not view[(slice(16, 20), slice(0, 5), slice(0, 5))].any()  # outside the region's box
    assert PackedMask((5, 5, 5)).compress().box is None  # an empty mask stays empty


def test_repaint_answers_the_box_of_the_voxels_that_changed():
    labels = LabelMap((20, 20, 20))
    big = np.zeros((12, 12, 12), dtype=bool)
    big[1:11, 1:11, 1:11] = True
    box = (slice(4, 16),) * 3
    assert labels.repaint(box, [(1, box, big)]) == (slice(5, 15),) * 3
    grown = big.copy()
    grown[11, 5:7, 5:7] = True  # a bump on one face
    assert labels.repaint(box, [(1, box, grown)]) == (slice(15, 16), slice(9, 11), slice(9, 11))
    assert labels.repaint(box, [(1, box, grown)]) is None  # the same again: nothing changed
