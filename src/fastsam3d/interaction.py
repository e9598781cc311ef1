"""What the 3D engine (:class:`~fastsam3d.session.Session`) and the slice-by-slice engine for 2D
SAMs (:class:`~fastsam3d.slicewise.SliceSession`) share: the answer of an interaction, progress
events, point frames and label-map compositing.

Both engines hold one volume, several objects (label values 1, 2, ...), one undo history per
object, and a label map on the input grid that each interaction repaints only inside the box it
changed; every verb (``add_click``, ``add_clicks``, ``set_box``, ``set_mask``, ``undo``, ``redo``,
``reset``, ``remove_object``) returns an :class:`Interaction`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

from .errors import PromptError
from .io import Volume, ras_to_lps

Slices = tuple[slice, slice, slice]


@dataclass
class Timings:
    """Seconds spent by the last interaction, by stage (``slices``: 2D slices segmented)."""

    encoder: float = 0.0
    decoder: float = 0.0
    paste: float = 0.0
    slices: int = 0

    @property
    def total(self) -> float:
        return self.encoder + self.decoder + self.paste


@dataclass(frozen=True)
class Interaction:
    """The answer of one interaction: the label-map box it repainted (None: nothing changed) and
    its timings."""

    changed_region: Slices | None
    timings: Timings


@dataclass(frozen=True)
class Progress:
    """A long interaction's progress (2D propagation): ``done`` slices of ``total`` (None when the
    object's extent is not known yet); ``region`` is the label-map box of the slice just segmented
    and ``values`` the label values it will show."""

    done: int
    total: int | None
    region: Slices | None = None
    values: np.ndarray | None = None


ProgressCallback = Callable[[Progress], None]


def voxel_index(volume: Volume, point, world: bool = False, ras: bool = False) -> np.ndarray:
    """A point in input voxel indices (default) or world mm (LPS; RAS with ``ras=True``), checked
    to lie inside the volume."""
    point = np.asarray(point, dtype=np.float64).reshape(-1)
    if point.shape != (3,) or not np.isfinite(point).all():
        raise PromptError(f"a point needs three finite coordinates, got {point.tolist()}")
    if world:
        point = volume.world_to_index(ras_to_lps(point) if ras else point)
    if np.any(np.round(point) < 0) or np.any(np.round(point) > np.array(volume.shape) - 1):
        unit = "world point (mm)" if world else "voxel"
        raise PromptError(f"point at {unit} {np.round(point, 2).tolist()} is outside the volume of shape {volume.shape}")
    return point


def union_box(boxes: Iterable[Slices | None]) -> Slices | None:
    """The smallest box holding every non-empty box (None when there is none)."""
    boxes = [b for b in boxes if b is not None and all(s.stop > s.start for s in b)]
    if not boxes:
        return None
    return tuple(slice(min(b[a].start for b in boxes), max(b[a].stop for b in boxes)) for a in range(3))


def bounding_box(mask: np.ndarray) -> Slices | None:
    """The box of a mask's non-zero voxels (None when it is empty); one pass per axis over
    projections, not over the voxels' coordinates."""
    box = []
    for axis in range(mask.ndim):
        hits = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
        if hits.size == 0:
            return None
        box.append(slice(int(hits[0]), int(hits[-1]) + 1))
    return tuple(box)


def paint_labels(labels: np.ndarray, box: Slices, pieces: Iterable[tuple[int, Slices, np.ndarray]]) -> None:
    """Recompose ``labels`` inside ``box`` from (label, piece box, boolean piece) pieces; where
    objects overlap the higher label wins, so the composite is a voxel-wise maximum of
    ``piece * label`` (branch-free, unlike masked assignment)."""
    region = labels[box]
    region.fill(0)
    for label, piece_box, piece in pieces:
        overlap = tuple(slice(max(a.start, b.start), min(a.stop, b.stop)) for a, b in zip(box, piece_box))
        if any(s.stop <= s.start for s in overlap):
            continue
        target = tuple(slice(o.start - b.start, o.stop - b.start) for o, b in zip(overlap, box))
        source = tuple(slice(o.start - b.start, o.stop - b.start) for o, b in zip(overlap, piece_box))
        painted = np.multiply(piece[source], label, dtype=region.dtype)
        np.maximum(region[target], painted, out=region[target])


@dataclass(frozen=True)
class Uncertainty:
    """Per-voxel mean probability and entropy (bits) on the input voxels inside ``box``."""

    box: Slices
    probability: np.ndarray
    entropy: np.ndarray

    def full(self, which: str, shape: tuple[int, int, int]) -> np.ndarray:
        """``"probability"`` or ``"entropy"`` as a full-size float32 map (0 outside ``box``)."""
        values = np.zeros(shape, dtype=np.float32)
        values[self.box] = getattr(self, which)
        return values


def binary_entropy(p: np.ndarray) -> np.ndarray:
    """Entropy in bits of a foreground probability (0 where it is 0: outside the estimate)."""
    q = np.clip(p, 1e-7, 1 - 1e-7)
    entropy = -(q * np.log2(q) + (1 - q) * np.log2(1 - q))
    return np.where(p > 0, entropy, 0.0).astype(np.float32)
