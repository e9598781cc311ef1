"""How a 2D model sees a volume's slices.

Slices are cut across ``axis`` (default: the input axis closest to superior-inferior, i.e. axial)
and shown as a radiologist sees them, rows towards posterior / inferior and columns towards
patient left (:class:`SlicePlane`), with square physical pixels: the slice is resized so its longer
physical side is the model's input size, padded, and the low-res logits are mapped back to the
slice grid by the same two bilinear (align_corners=False) maps SAM uses, composed into one matrix
per axis (:class:`SliceGeometry`). Also here: a 2D object's history step (:class:`SliceState`),
slice boxes, box edits, the intensity window.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..io import Volume, is_ct
from .labelmap import Slices, bounding_box
from .roi import canonical_axes, upsampling_weights

CT_WINDOW = (-160.0, 240.0)  # soft-tissue window (level 40, width 400), as MedSAM prepares CT
Click2D = tuple[float, float, bool]  # (row, col, positive) on a slice's display grid


@dataclass(frozen=True)
class SliceState:
    """One step of an object's history: its mask (packed bits in its box), its clicks per slice and
    its first prompted slice (propagation flows away from it)."""

    box: Slices | None = None
    bits: np.ndarray | None = field(default=None, compare=False, repr=False)
    clicks: tuple[tuple[int, tuple[Click2D, ...]], ...] = ()
    root: int | None = None

    @classmethod
    def of(cls, mask: np.ndarray, clicks: dict[int, list[Click2D]], root: int | None) -> SliceState:
        box = bounding_box(mask)
        bits = None if box is None else np.packbits(mask[box], axis=None)
        return cls(
            box, bits, tuple((k, tuple(v)) for k, v in sorted(clicks.items())), root if box is not None else None
        )

    def region(self) -> tuple[Slices, np.ndarray] | None:
        """(box, boolean mask inside it), or None for an empty object."""
        if self.box is None:
            return None
        shape = tuple(s.stop - s.start for s in self.box)
        return self.box, np.unpackbits(self.bits, count=int(np.prod(shape))).reshape(shape).astype(bool)


@dataclass(frozen=True)
class SlicePlane:
    """Slices across input ``axis``, shown with rows and columns along (input axis, sign): rows
    towards posterior / inferior, columns towards patient left."""

    axis: int
    rows: tuple[int, int]
    cols: tuple[int, int]
    shape: tuple[int, int, int]

    @classmethod
    def of(cls, volume: Volume, axis: int | None = None) -> SlicePlane:
        """Slices across ``axis`` (default: the input axis closest to superior-inferior)."""
        axes, signs = canonical_axes(volume.direction)
        axis = axes[2] if axis is None else axis
        ras = axes.index(axis)
        rows_ras, cols_ras = {2: (1, 0), 1: (2, 0), 0: (2, 1)}[ras]
        return cls(axis, (axes[rows_ras], -signs[rows_ras]), (axes[cols_ras], -signs[cols_ras]), tuple(volume.shape))

    def in_plane(self, point: np.ndarray) -> tuple[float, float]:
        """Voxel -> (row, col) on its slice's display grid."""
        (ra, rs), (ca, cs) = self.rows, self.cols
        row = point[ra] if rs > 0 else self.shape[ra] - 1 - point[ra]
        col = point[ca] if cs > 0 else self.shape[ca] - 1 - point[ca]
        return float(row), float(col)

    def pixels(self, voxels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(M, 3) voxels -> their (rows, cols) on their slices' display grid."""
        (ra, rs), (ca, cs) = self.rows, self.cols
        rows = voxels[:, ra] if rs > 0 else self.shape[ra] - 1 - voxels[:, ra]
        cols = voxels[:, ca] if cs > 0 else self.shape[ca] - 1 - voxels[:, ca]
        return rows, cols

    def take(self, array: np.ndarray, index: int) -> np.ndarray:
        """The (H, W) display-oriented slice ``index`` of a volume-shaped array."""
        (ra, rs), (_, cs) = self.rows, self.cols
        plane = np.take(array, index, axis=self.axis)
        remaining = [a for a in range(3) if a != self.axis]
        plane = plane if remaining.index(ra) == 0 else plane.T
        return plane[:: 1 if rs > 0 else -1, :: 1 if cs > 0 else -1]

    def put(self, array: np.ndarray, index: int, plane: np.ndarray) -> None:
        """Store a display-oriented (H, W) plane as slice ``index`` of ``array`` (inverse of :meth:`take`)."""
        (ra, rs), (_, cs) = self.rows, self.cols
        plane = plane[:: 1 if rs > 0 else -1, :: 1 if cs > 0 else -1]
        remaining = [a for a in range(3) if a != self.axis]
        where = [slice(None)] * 3
        where[self.axis] = index
        array[tuple(where)] = plane if remaining.index(ra) == 0 else plane.T

    def geometry(self, spacing, img_size: int, low_res: int) -> SliceGeometry:
        """A slice's mapping onto a model input of ``img_size`` pixels with square physical pixels."""
        spacing_rows, spacing_cols = spacing[self.rows[0]], spacing[self.cols[0]]
        height, width = self.shape[self.rows[0]], self.shape[self.cols[0]]
        scale = img_size / max(height * spacing_rows, width * spacing_cols)
        resized = (max(1, round(height * spacing_rows * scale)), max(1, round(width * spacing_cols * scale)))
        return SliceGeometry(height, width, resized, img_size, low_res)


@dataclass(frozen=True)
class SliceGeometry:
    """How a slice of shape (H, W) maps onto the model input (h, w) inside an S x S square."""

    height: int
    width: int
    resized: tuple[int, int]
    size: int
    low_res: int

    def to_model(self) -> tuple[np.ndarray, np.ndarray]:
        """(h, H) and (w, W) resize matrices (bilinear, align_corners=False)."""
        return upsampling_weights(self.height, self.resized[0]), upsampling_weights(self.width, self.resized[1])

    def from_low_res(self) -> tuple[np.ndarray, np.ndarray]:
        """(H, L) and (W, L): low-res logits -> S x S -> crop to (h, w) -> (H, W), as one matrix per axis."""
        up = upsampling_weights(self.low_res, self.size)
        rows = upsampling_weights(self.resized[0], self.height) @ up[: self.resized[0]]
        cols = upsampling_weights(self.resized[1], self.width) @ up[: self.resized[1]]
        return rows, cols

    def point_to_model(self, row: float, col: float) -> tuple[float, float]:
        """Slice pixel (row, col) -> model input (x, y), pixel centres aligned."""
        y = (row + 0.5) * self.resized[0] / self.height - 0.5
        x = (col + 0.5) * self.resized[1] / self.width - 0.5
        return x, y


def box_of(plane: np.ndarray, margin: int, shape: tuple[int, int]) -> tuple[int, int, int, int]:
    rows, cols = np.nonzero(plane)
    return (
        max(int(rows.min()) - margin, 0),
        max(int(cols.min()) - margin, 0),
        min(int(rows.max()) + margin, shape[0] - 1),
        min(int(cols.max()) + margin, shape[1] - 1),
    )


def grown(box: Slices, axis: int, margin: int, shape: tuple[int, int, int]) -> Slices:
    """``box`` grown by ``margin`` voxels in-plane (the uncertainty band around the object)."""
    return tuple(
        s if a == axis else slice(max(s.start - margin, 0), min(s.stop + margin, n))
        for a, (s, n) in enumerate(zip(box, shape, strict=True))
    )


def intensity_window(array: np.ndarray) -> tuple[float, float]:
    """CT (minimum below -500 HU): the soft-tissue window; otherwise the 0.5-99.5 percentiles of
    the non-zero voxels (of at most ~1M of them, evenly strided). Each slice is min-max scaled
    again after windowing."""
    if is_ct(array):
        return CT_WINDOW
    sample = array.ravel()[:: max(1, array.size // 2**20)]
    values = sample[sample > 0] if (sample > 0).any() else sample
    low, high = np.percentile(values.astype(np.float32), [0.5, 99.5])
    return float(low), float(high)


def edited_box(
    current: np.ndarray, row: int, col: int, positive: bool, margin: int
) -> tuple[int, int, int, int] | None:
    """A box-only model's slice box after a click at (row, col) on the slice's mask ``current``: an
    include click grows it to hold the click (plus ``margin``); an exclude click inside the mask
    moves the nearest box edge past it (None: nothing left, or the click missed the mask)."""
    if positive:
        r0, c0, r1, c1 = box_of(current, margin, current.shape)
        return (
            max(min(r0, row - margin), 0),
            max(min(c0, col - margin), 0),
            min(max(r1, row + margin), current.shape[0] - 1),
            min(max(c1, col + margin), current.shape[1] - 1),
        )
    if not current[row, col]:
        return None
    r0, c0, r1, c1 = box_of(current, 0, current.shape)
    edges = {"top": row - r0, "bottom": r1 - row, "left": col - c0, "right": c1 - col}
    nearest = min(edges, key=edges.get)
    if nearest == "top":
        r0 = row + 1
    elif nearest == "bottom":
        r1 = row - 1
    elif nearest == "left":
        c0 = col + 1
    else:
        c1 = col - 1
    return (r0, c0, r1, c1) if r0 <= r1 and c0 <= c1 else None
