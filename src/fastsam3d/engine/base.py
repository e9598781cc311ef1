"""What the 3D engine (:class:`~fastsam3d.engine.session3d.Session`) and the slice-by-slice engine for 2D
SAMs (:class:`~fastsam3d.engine.session2d.SliceSession`) share: :class:`ObjectEngine` (one volume,
several objects with label values 1, 2, ..., one undo history per object, and a
:class:`~fastsam3d.engine.labelmap.LabelMap` that each interaction repaints only inside the box it
changed), the answer of an interaction, progress events and point frames. Every verb (``add_click``,
``add_clicks``, ``add_scribble``, ``add_lasso``, ``set_box``, ``set_mask``, ``undo``, ``redo``,
``reset``, ``remove_object``) returns an :class:`Interaction`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, get_args

import numpy as np

from ..errors import PromptError
from ..io import Volume, check_finite, ras_to_lps, read_volume, write_volume
from .answers import Interaction, ProgressCallback, Timings
from .labelmap import LabelMap, Region, Slices, relative, union_box
from .strokes import Stroke, StrokeKind, checked_points, lasso, scribble

MAX_HISTORY = 100  # undo steps kept per object
Frame = Literal["voxel", "lps", "ras"]  # a point as an input voxel index (i, j, k), or world mm in LPS / RAS


def voxel_index(volume: Volume, point, frame: Frame = "voxel") -> np.ndarray:
    """A point given in ``frame`` as a continuous input voxel index (i, j, k), checked to lie
    inside the volume. Frames: ``"voxel"`` (ITK index order = nibabel ``data[i, j, k]``),
    ``"lps"`` (world mm as ITK / Slicer / DICOM) or ``"ras"`` (world mm as NIfTI / nibabel)."""
    point = np.asarray(point, dtype=np.float64).reshape(-1)
    if point.shape != (3,) or not np.isfinite(point).all():
        raise PromptError(f"a point needs three finite coordinates, got {point.tolist()}")
    return voxel_indices(volume, point[None], frame)[0]


def voxel_indices(volume: Volume, points: np.ndarray, frame: Frame = "voxel") -> np.ndarray:
    """Finite points (N, 3) given in ``frame`` (see :func:`voxel_index`) as continuous input voxel
    indices, every one checked to lie inside the volume."""
    if frame not in get_args(Frame):
        raise PromptError(f"unknown point frame {frame!r}: use one of {', '.join(get_args(Frame))}")
    points = np.asarray(points, dtype=np.float64)
    if frame != "voxel":
        points = volume.world_to_index(ras_to_lps(points) if frame == "ras" else points)
    rounded = np.round(points)
    outside = np.flatnonzero(np.any((rounded < 0) | (rounded > np.array(volume.shape) - 1), axis=1))
    if outside.size:
        unit = f"world point ({frame.upper()} mm)" if frame != "voxel" else "voxel"
        where = "" if len(points) == 1 else f" (point {int(outside[0])})"
        raise PromptError(
            f"point at {unit} {np.round(points[outside[0]], 2).tolist()}{where} is outside the volume "
            f"of shape {volume.shape}"
        )
    return points


@dataclass
class SegmentObject:
    """A labelled structure and its undo/redo history of immutable engine states (the oldest
    steps beyond ``max_history`` are forgotten, so a long session's memory stays bounded)."""

    label: int
    name: str
    history: list = field(repr=False)  # a full history's repr would list every step's prompts
    position: int = 0
    max_history: int = MAX_HISTORY

    @property
    def state(self):
        return self.history[self.position]

    def push(self, state) -> None:
        del self.history[self.position + 1 :]
        self.history.append(state)
        del self.history[: max(len(self.history) - 1 - self.max_history, 0)]
        self.position = len(self.history) - 1


class ObjectEngine:
    """Objects, undo/redo and the label map, shared by both engines. A subclass gives the empty
    state of a new object (``_empty_state``) and a state's mask as (box, boolean piece) regions
    (``_compute_regions``); every verb answers with an :class:`Interaction`."""

    def __init__(self) -> None:
        self.volume: Volume | None = None
        self.objects: dict[int, SegmentObject] = {}
        self.active: int | None = None
        self._label_map: LabelMap | None = None
        self.timings = Timings()  # of the running interaction (a progress callback may read it)
        self.progress: ProgressCallback | None = None  # called as a long interaction advances; may raise to cancel it
        self._region_cache: dict[int, tuple[object, list[Region]]] = {}
        self._voxel_counts: dict[int, tuple[object, int]] = {}

    # the engine's predictor (set by each engine): cached embeddings and the model's passes
    @property
    def encoder_runs(self) -> int:
        return self.predictor.encoder_runs

    @property
    def decoder_runs(self) -> int:
        return self.predictor.decoder_runs

    def cached_bytes(self) -> int:
        """Memory held by the cached image embeddings."""
        return self.predictor.cached_bytes()

    def _empty_state(self):
        raise NotImplementedError

    def _compute_regions(self, state) -> list[Region]:
        raise NotImplementedError

    # --- image and objects ------------------------------------------------------------

    def _start_image(self, image: Volume | str | Path) -> Volume:
        """Load (or take) a volume, checked for NaNs: no objects, an empty label map."""
        volume = image if isinstance(image, Volume) else read_volume(image)
        check_finite(volume)
        self.volume = volume
        self.objects.clear()
        self._region_cache.clear()
        self._voxel_counts.clear()
        self.active = None
        self._label_map = LabelMap(volume.shape)
        return volume

    def add_object(self, name: str | None = None) -> int:
        """Start a new object; it becomes the active one. Returns its label value."""
        self._require_image()
        label = max(self.objects, default=0) + 1
        if label > 65535:
            raise PromptError("too many objects (at most 65535)")
        self._label_map.make_room(label)
        self.objects[label] = SegmentObject(label, name or f"object {label}", [self._empty_state()])
        self.active = label
        return label

    def select(self, label: int) -> None:
        self._object(label)
        self.active = label

    def remove_object(self, label: int) -> Interaction:
        obj = self._object(label)
        boxes = self._boxes(obj.state)
        del self.objects[label]
        self.active = max(self.objects, default=None) if self.active == label else self.active
        self.timings = Timings()
        return self._repaint(boxes)

    def to_index(self, point, frame: Frame = "voxel") -> np.ndarray:
        """A point given in ``frame`` (see :func:`voxel_index`) as a checked input voxel index."""
        return voxel_index(self._require_image(), point, frame)

    def _box_corners(
        self, corner_a, corner_b, depth_mm: float | None, frame: Frame = "voxel"
    ) -> tuple[np.ndarray, np.ndarray]:
        """A box's checked low and high corners (rounded voxels). A box flat along one axis (drawn
        on a slice) gets ``depth_mm`` through it, centred on its slice and clipped to the volume;
        ``depth_mm`` is ignored for a box that has depth already."""
        a, b = self.to_index(corner_a, frame), self.to_index(corner_b, frame)
        low, high = np.minimum(a, b), np.maximum(a, b)
        flat = [axis for axis in range(3) if round(high[axis]) == round(low[axis])]
        if depth_mm is not None and len(flat) == 1:
            if not np.isfinite(depth_mm) or depth_mm < 0:
                raise PromptError(f"a box depth must be a finite number of mm >= 0, got {depth_mm}")
            axis, spacing = flat[0], self.volume.spacing
            half = depth_mm / 2 / float(spacing[axis])
            low[axis] = max(low[axis] - half, 0)
            high[axis] = min(high[axis] + half, self.volume.shape[axis] - 1)
        return low.round().astype(int), high.round().astype(int)

    def _checked_mask(self, mask) -> np.ndarray:
        """An initial mask checked against the image: the same shape, not empty; as booleans."""
        volume = self._require_image()
        mask = np.asarray(mask)
        if mask.shape != volume.shape:
            raise PromptError(f"initial mask has shape {mask.shape}, the image {volume.shape}")
        if not mask.any():
            raise PromptError("the initial mask is empty")
        return mask.astype(bool, copy=False)

    def _checked_clicks(self, points, positives, frame: Frame) -> tuple[list[np.ndarray], list[bool]]:
        """Every click's voxel index and flag, all checked before any is applied."""
        indices = [self.to_index(point, frame) for point in points]
        positives = [bool(p) for p in positives]
        if not indices or len(positives) != len(indices):
            raise PromptError(
                f"give one include/exclude flag per point ({len(indices)} points, {len(positives)} flags)"
            )
        return indices, positives

    # --- strokes ----------------------------------------------------------------------

    def add_scribble(
        self, points, positive: bool = True, *, frame: Frame = "voxel", label: int | None = None
    ) -> Interaction:
        """A scribble: a polyline (N >= 2 points, voxel or world as in ``add_click``) on one slice or
        freehand in 3D. Include (``positive``): its voxels belong to the object; exclude: they do not.
        One interaction (one undo step); every point is checked before anything is applied."""
        return self._add_stroke("scribble", points, positive, frame, label)

    def add_lasso(
        self, polygon, positive: bool = True, *, frame: Frame = "voxel", label: int | None = None
    ) -> Interaction:
        """A lasso: a closed polygon (N >= 3 points, not crossing itself) on one slice. Include: the
        area it encloses belongs to the object on that slice; exclude: it does not."""
        return self._add_stroke("lasso", polygon, positive, frame, label)

    def add_stroke(self, stroke: Stroke, *, label: int | None = None) -> Interaction:
        """A stroke already on this volume's voxels (e.g. :func:`~fastsam3d.engine.strokes.from_slice_mask`)."""
        volume = self._require_image()
        if len(stroke.voxels) == 0 or np.any(stroke.voxels < 0) or np.any(stroke.voxels >= np.array(volume.shape)):
            raise PromptError(f"the {stroke.kind} leaves the volume of shape {volume.shape}")
        return self._apply_stroke(self._object_for_prompt(label), stroke)

    def _add_stroke(self, kind: StrokeKind, points, positive: bool, frame: Frame, label: int | None) -> Interaction:
        volume = self._require_image()
        indices = voxel_indices(volume, checked_points(points), frame)
        stroke = (scribble if kind == "scribble" else lasso)(indices, positive, volume.shape)
        return self._apply_stroke(self._object_for_prompt(label), stroke)

    def _apply_stroke(self, obj: SegmentObject, stroke: Stroke) -> Interaction:
        raise NotImplementedError

    # --- transactions -----------------------------------------------------------------

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """Everything inside happens, or none of it: if the block raises, the objects, their undo
        histories, the active object and the label map are restored, and the error propagates.

            with session.transaction():
                session.add_click(a)
                session.set_box(b, c)
        """
        saved = {label: (obj, list(obj.history), obj.position) for label, obj in self.objects.items()}
        active = self.active
        try:
            yield
        except BaseException:
            boxes = [self._boxes(obj.state) for obj in self.objects.values()]
            self.objects = {label: obj for label, (obj, _, _) in saved.items()}
            for obj, history, position in saved.values():
                obj.history[:], obj.position = history, position
            self.active = active
            self._repaint(*boxes, *(self._boxes(obj.state) for obj in self.objects.values()))
            raise

    # --- history ----------------------------------------------------------------------

    def undo(self, label: int | None = None) -> Interaction | None:
        """Step the object one interaction back; None when there is nothing to undo."""
        return self._move(label, -1)

    def redo(self, label: int | None = None) -> Interaction | None:
        """Step forward again after an undo; None when there is nothing to redo."""
        return self._move(label, +1)

    def reset(self, label: int | None = None) -> Interaction:
        """Clear the object's prompts and mask (itself undoable); cached embeddings are kept."""
        obj = self._object(label)
        boxes = self._boxes(obj.state)
        obj.push(self._empty_state())
        self.timings = Timings()
        return self._repaint(boxes)

    # --- results ----------------------------------------------------------------------

    def mask(self, label: int | None = None) -> np.ndarray:
        """Boolean mask of one object on the input grid."""
        return self._mask_of(self._object(label).state)

    def volume_ml(self, label: int | None = None) -> float:
        """The object's volume in millilitres: its mask's voxels (counted once per undo step)."""
        state = self._object(label).state
        cached = self._voxel_counts.get(id(state))
        if cached is None or cached[0] is not state:
            regions = self._regions(state)
            box = union_box(b for b, _ in regions)
            count = 0
            if box is not None:
                mask = np.zeros(tuple(s.stop - s.start for s in box), dtype=bool)
                for piece_box, piece in regions:
                    mask[relative(piece_box, box)] |= piece
                count = int(np.count_nonzero(mask))
            current = {id(obj.state) for obj in self.objects.values()}
            for key in [k for k in self._voxel_counts if k not in current]:
                del self._voxel_counts[key]
            cached = self._voxel_counts[id(state)] = (state, count)
        return cached[1] * float(np.prod(self.volume.spacing)) / 1000.0

    def label_map(self) -> np.ndarray:
        """All objects as one label map on the input grid (the higher label wins where they overlap)."""
        self._require_image()
        return self.labels.copy()

    @property
    def labels(self) -> np.ndarray | None:
        """The live label map (repainted in place; a new array once it widens to uint16)."""
        return None if self._label_map is None else self._label_map.array

    def save_labels(self, path: str | Path) -> Path:
        """Write the label map on the input grid (atomically)."""
        return write_volume(self._require_image().with_array(self.label_map()), path)

    def save_map(self, array: np.ndarray, path: str | Path) -> Path:
        """Write a full-size float map (probability, entropy) on the input grid (atomically)."""
        return write_volume(self._require_image().with_array(array.astype(np.float32, copy=False)), path)

    # --- internals --------------------------------------------------------------------

    def _require_image(self) -> Volume:
        if self.volume is None:
            raise PromptError("no image: call set_image() first")
        return self.volume

    def _object(self, label: int | None) -> SegmentObject:
        label = self.active if label is None else label
        if label is None or label not in self.objects:
            raise PromptError(f"no object {label}; objects: {sorted(self.objects) or 'none'}")
        return self.objects[label]

    def _object_for_prompt(self, label: int | None) -> SegmentObject:
        if label is None and self.active is None:
            self.add_object()
        return self._object(label)

    def _move(self, label: int | None, step: int) -> Interaction | None:
        obj = self._object(label)
        target = obj.position + step
        if not 0 <= target < len(obj.history):
            return None
        boxes = self._boxes(obj.state)
        obj.position = target
        self.timings = Timings()
        return self._repaint(boxes, self._boxes(obj.state))

    def _regions(self, state) -> list[Region]:
        """A state's mask as (input box, boolean piece) regions; cached for the objects' current states."""
        cached = self._region_cache.get(id(state))
        if cached is not None and cached[0] is state:
            return cached[1]
        regions = self._compute_regions(state)
        current = {id(obj.state) for obj in self.objects.values()}
        for key in [k for k in self._region_cache if k not in current]:
            del self._region_cache[key]
        self._region_cache[id(state)] = (state, regions)
        return regions

    def _boxes(self, state) -> list[Slices]:
        return [box for box, _ in self._regions(state)]

    def _mask_of(self, state) -> np.ndarray:
        mask = np.zeros(self._require_image().shape, dtype=bool)
        for box, piece in self._regions(state):
            mask[box] |= piece
        return mask

    def _repaint(self, *box_lists: list[Slices]) -> Interaction:
        """Recompose the label map inside the union of the given boxes; the interaction's answer,
        whose region is the box of the voxels that changed."""
        box = union_box(box for boxes in box_lists for box in boxes)
        if box is not None:
            pieces = (
                (label, sub_box, sub)
                for label, obj in self.objects.items()
                for sub_box, sub in self._regions(obj.state)
            )
            box = self._label_map.repaint(box, pieces)
        return Interaction(box, self.timings)
