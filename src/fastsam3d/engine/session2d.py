"""2D SAMs on volumes: segment one slice from a box or clicks, then propagate slice by slice.

    session = SliceSession("litemedsam")
    session.set_image("ct.nii.gz")
    session.set_box((40, 50, 18), (90, 110, 18))     # a box on slice 18: segmented, then propagated
    session.add_click((70, 80, 22), positive=False)  # correct slice 22, re-propagate from there

:class:`SliceSession` implements the :class:`~.interface.Engine` verbs, as the 3D ``Session`` does.
Slices are shown to the model as :mod:`.slices` describes; each next slice is prompted with the box
of the previous slice's mask (plus ``box_margin`` pixels); propagation stops where the mask
vanishes, where the model's predicted IoU falls below ``min_score``, or at a box's slice range.
Slice embeddings are cached (:mod:`.predictor2d`), so a correction re-propagates at decoder cost.

Clicks on box-only models (LiteMedSAM, MedSAM) become box edits (:func:`.slices.edited_box`): an
include click grows its slice's box (on a slice without mask: the nearest masked slice's box); an
exclude click moves the nearest box edge past it and drops the part still covering it, on its slice
only (propagating the cut shrank whole organs: liver Dice 0.908 -> 0.848 on the development CT).
An object's first prompt must be a box: a box guessed around one click gave Dice 0.2-0.3.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from ..clicks import dice
from ..errors import PromptError
from ..io import Volume
from ..modeling.sam2d import Sam2D
from ..registry import load_model
from ..runtime import default_device
from .answers import Interaction, Progress, Timings, Uncertainty, binary_entropy
from .base import Frame, ObjectEngine, SegmentObject
from .cache import CacheView
from .labelmap import Region
from .predictor2d import SlicePredictor
from .slices import Click2D, SlicePlane, SliceState, box_of, edited_box, grown
from .strokes import Stroke, sampled

UNCHANGED_DICE = 0.98  # a corrective click's propagation stops at a slice that changes less than this
MIN_SCORE = 0.7  # see docs/benchmarks.md "2D models on volumes": stops propagation past the object's end
SCRIBBLE_CLICKS = 8  # clicks a scribble becomes, spread along it


class SliceSession(ObjectEngine):
    """Interactive 3D segmentation with a 2D SAM, slice by slice (see the module docstring).

    ``model``: a 2D model name (``litemedsam``, ``medsam``, ``sam-vit-b``, ``sam-med2d``) or a loaded
    :class:`Sam2D`; ``axis``: the input axis slices are cut across (default: closest to S-I);
    ``box_margin``: pixels around a slice's mask that prompt its neighbour; a slice mask under
    ``min_pixels`` or with a predicted IoU under ``min_score`` (0: no check) ends the object;
    ``cache_mb``: slice embeddings kept (LiteMedSAM: 2 MB per slice), or ``feature_cache``, a view
    of a cache shared with other sessions; ``precision``: ``"auto"`` (the fastest that keeps the
    masks, on a CPU measured once per machine: :func:`~fastsam3d.runtime.default_precision`; a
    model object stays as it is), ``"fp32"``, ``"onnx-fp32"``, ``"openvino-fp32"``, ``"int8"`` or
    ``"bf16"``.
    """

    dims = 2

    def __init__(
        self,
        model: str | Sam2D = "litemedsam",
        device: str | torch.device | None = None,
        *,
        checkpoint: str | Path | None = None,
        axis: int | None = None,
        box_margin: int = 3,
        min_pixels: int = 5,
        cache_mb: float = 1024.0,
        precision: str = "auto",
        min_score: float = MIN_SCORE,
        feature_cache: CacheView | None = None,
    ) -> None:
        super().__init__()
        self.device = torch.device(device or default_device())
        if isinstance(model, str):
            model = load_model(model, checkpoint, device=self.device, precision=precision)
        if model.config.spatial_dims != 2:
            raise ValueError(f"{model.config.name} is a 3D model: open it in a Session")
        self.model, self.config = model.to(self.device).eval(), model.config
        self.requested_axis = axis
        self.box_margin = box_margin
        self.min_pixels = min_pixels
        self.min_score = min_score
        self._total: int | None = None  # slices the running interaction will segment, when known
        self.predictor = SlicePredictor(
            self.model, self.device, lambda: self.timings, min_pixels, cache_mb, precision, feature_cache
        )
        self.precision = self.predictor.precision

    # --- image and objects --------------------------------------------------------------

    def set_image(self, image: Volume | str | Path) -> Volume:
        """Load (or take) the volume; clears objects and cached embeddings."""
        volume = self._start_image(image)
        self.plane = SlicePlane.of(volume, self.requested_axis)
        self.axis = self.plane.axis
        if self.axis not in (0, 1, 2):
            raise PromptError(f"slice axis must be 0, 1 or 2, got {self.axis}")
        self.predictor.set_volume(volume, self.plane)
        return volume

    # --- prompts ------------------------------------------------------------------------

    def needs_encoder(self, point, *, label: int | None = None) -> bool:
        """Whether a click at this voxel would run the image encoder (its slice is not cached)."""
        return not self.predictor.is_cached(round(self.to_index(point)[self.axis]))

    def set_box(self, corner_a, corner_b, *, label: int | None = None, depth_mm: float | None = None) -> Interaction:
        """A box given by two corner voxels (inclusive). A box drawn on one slice segments that
        slice and propagates up and down until the object ends (with ``depth_mm``: within that
        depth, centred on the slice); a box over several slices segments its middle slice and
        propagates within its slice range."""
        low, high = self._box_corners(corner_a, corner_b, depth_mm)
        flat = [axis for axis in range(3) if axis != self.axis and low[axis] == high[axis]]
        if flat:
            raise PromptError(
                f"box {low.tolist()}-{high.tolist()} has no extent along axis {flat[0]}; a 2D model "
                f"takes a rectangle on a slice across axis {self.axis}"
            )
        obj = self._object_for_prompt(label)
        self.timings = Timings()
        work = np.zeros(self.volume.shape, dtype=bool)
        start = self._segment_box(obj, work, low, high)
        return self._commit(obj, work, {}, start)

    def _segment_box(self, obj: SegmentObject, work: np.ndarray, low: np.ndarray, high: np.ndarray) -> int:
        """Segment the middle slice of the box (low, high corner voxels) into ``work`` and propagate
        (up and down for a one-slice box, within its slices otherwise); returns that slice."""
        start = int((low[self.axis] + high[self.axis]) // 2)
        one_slice = low[self.axis] == high[self.axis]
        limits = (0, self.volume.shape[self.axis] - 1) if one_slice else (int(low[self.axis]), int(high[self.axis]))
        corners = [self.plane.in_plane(low), self.plane.in_plane(high)]
        rows = sorted(round(c[0]) for c in corners)
        cols = sorted(round(c[1]) for c in corners)
        self._total = None if one_slice else limits[1] - limits[0] + 1
        first = self.predictor.segment(start, box=(rows[0], cols[0], rows[1], cols[1]))
        if first is None:
            raise PromptError("the model found nothing inside the box")
        self.plane.put(work, start, first)
        self._report(obj, work, start)
        self._propagate(obj, work, start, first, limits)
        return start

    def _apply_stroke(self, obj: SegmentObject, stroke: Stroke) -> Interaction:
        """A lasso becomes its slice's mask, then propagation; a scribble becomes clicks along it
        (a box-only model's empty object starts from its box). The stroke's voxels end on its side
        of the mask; an exclude lasso edits its slice only (docs/prompts.md)."""
        if stroke.kind == "lasso" and stroke.axis != self.axis:
            raise PromptError(
                f"a 2D model takes a lasso on a slice across axis {self.axis}; this one lies across axis {stroke.axis}"
            )
        work, clicks, root = self._working_copy(obj)
        if stroke.kind == "lasso":
            root = self._lasso(obj, work, root, stroke)
        elif stroke.positive and not work.any() and not self.config.point_prompts:
            margin = np.array([0 if a == self.axis else self.box_margin for a in range(3)])
            low = np.maximum(stroke.voxels.min(0) - margin, 0)
            high = np.minimum(stroke.voxels.max(0) + margin, np.array(work.shape) - 1)
            root = self._segment_box(obj, work, low, high)
        else:
            for point in sampled(stroke.voxels.astype(np.float64), SCRIBBLE_CLICKS):
                root = self._click(obj, work, clicks, root, point, stroke.positive)
        work[tuple(stroke.voxels.T)] = stroke.positive
        return self._commit(obj, work, clicks, root)

    def _lasso(self, obj: SegmentObject, work: np.ndarray, root: int | None, stroke: Stroke) -> int | None:
        index = stroke.slice_index
        area = np.zeros(self.plane.take(work, index).shape, dtype=bool)
        area[self.plane.pixels(stroke.voxels)] = True
        current = self.plane.take(work, index)
        if not stroke.positive:
            self.plane.put(work, index, current & ~area)
            self._report(obj, work, index)
            return root
        found = self.predictor.segment(index, box=box_of(area, self.box_margin, area.shape))
        near = ndimage.binary_dilation(area, iterations=self.box_margin)
        result = area | (near & (found if found is not None else area))
        self.plane.put(work, index, result)
        self._report(obj, work, index)
        return self._propagate_edit(obj, work, index, result, index if root is None else root)

    def add_click(
        self, point, positive: bool = True, *, frame: Frame = "voxel", label: int | None = None
    ) -> Interaction:
        """Include/exclude click at a voxel (or world mm with ``frame="lps"`` / ``"ras"``):
        its slice is re-segmented, then the change is propagated outwards until the slices agree
        with the current mask again."""
        return self.add_clicks([point], [positive], frame=frame, label=label)

    def add_clicks(self, points, positives, *, frame: Frame = "voxel", label: int | None = None) -> Interaction:
        """Several clicks as one interaction (one undo step), applied in order; every point is
        checked before any is applied."""
        indices, positives = self._checked_clicks(points, positives, frame)
        obj = self._object_for_prompt(label)
        work, clicks, root = self._working_copy(obj)
        for index, positive in zip(indices, positives, strict=True):
            root = self._click(obj, work, clicks, root, index, positive)
        return self._commit(obj, work, clicks, root)

    def set_mask(self, mask: np.ndarray, *, label: int | None = None) -> Interaction:
        """Start an object from an existing mask on the input grid (refined by later clicks)."""
        mask = self._checked_mask(mask)
        obj = self._object_for_prompt(label)
        slices = np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != self.axis)))
        self.timings = Timings()
        return self._commit(obj, mask.astype(bool), {}, int(slices[len(slices) // 2]))

    # --- results ------------------------------------------------------------------------

    def probability(self, label: int | None = None) -> np.ndarray:
        """Foreground probability of one object on the input grid: each of its slices decoded again
        from its prompts on the cached embedding (0 outside the object's slices)."""
        return self.uncertainty(samples=1, jitter_mm=0.0, label=label).full("probability", self.volume.shape)

    def uncertainty(
        self, samples: int = 16, jitter_mm: float = 3.0, seed: int = 0, label: int | None = None
    ) -> Uncertainty:
        """Mean foreground probability and its binary entropy (bits) over ``samples`` decoder runs
        per slice of the object, each with its box prompt's edges and its clicks moved by up to
        ``jitter_mm`` millimetres in the slice; the slice embeddings are the cached ones, so this
        costs decoder time only (one batched decoder call per slice)."""
        obj = self._object(label)
        region = next(iter(self._regions(obj.state)), None)
        if region is None:
            raise PromptError(f"object {obj.label} is empty: nothing to estimate")
        if samples < 1:
            raise PromptError("uncertainty needs at least one sample")
        started = time.perf_counter()
        mask = self._mask_of(obj.state)
        box = grown(region[0], self.axis, self.box_margin, mask.shape)
        generator = torch.Generator().manual_seed(seed)
        clicks = dict(obj.state.clicks)
        probability = self.predictor.probability_in(box, mask, clicks, self.box_margin, samples, jitter_mm, generator)
        self.timings = Timings(decoder=time.perf_counter() - started)
        return Uncertainty(box, probability, binary_entropy(probability))

    # --- interaction internals ----------------------------------------------------------

    def _empty_state(self) -> SliceState:
        return SliceState()

    def _compute_regions(self, state: SliceState) -> list[Region]:
        region = state.region()
        return [] if region is None else [region]

    def _working_copy(self, obj: SegmentObject) -> tuple[np.ndarray, dict[int, list[Click2D]], int | None]:
        """A new interaction on ``obj``: its mask as a full-size array to edit, its clicks and root slice."""
        self.timings = Timings()
        self._total = None
        state = obj.state
        return self._mask_of(state), {k: list(v) for k, v in state.clicks}, state.root

    def _commit(
        self, obj: SegmentObject, work: np.ndarray, clicks: dict[int, list[Click2D]], root: int | None
    ) -> Interaction:
        started = time.perf_counter()
        old = self._boxes(obj.state)
        obj.push(SliceState.of(work, clicks, root))
        answer = self._repaint(old, self._boxes(obj.state))
        self.timings.paste += time.perf_counter() - started
        return answer

    def _click(
        self,
        obj: SegmentObject,
        work: np.ndarray,
        clicks: dict[int, list[Click2D]],
        root: int | None,
        point: np.ndarray,
        positive: bool,
    ) -> int | None:
        """Apply one click to the working mask; returns the (possibly new) root slice."""
        index = round(point[self.axis])
        row, col = self.plane.in_plane(point)
        pixel = round(row), round(col)
        current = self.plane.take(work, index)
        if self.config.point_prompts:
            clicks.setdefault(index, []).append((row, col, positive))
            box = box_of(current, self.box_margin, current.shape) if current.any() else None
            result = self.predictor.segment(index, box=box, clicks=clicks[index])
        elif positive and not current.any():
            result = self.predictor.segment(index, box=self._continued_box(work, index, *pixel))
        else:
            box = edited_box(current, *pixel, positive, self.box_margin)
            if box is None:  # an exclude click outside the mask: nothing to remove
                return root
            result = self.predictor.segment(index, box=box)
        result = np.zeros(current.shape, bool) if result is None else result
        if not positive and result[pixel]:  # the excluded pixel must go
            components, _ = ndimage.label(result)
            result = result & (components != components[pixel])
        self.plane.put(work, index, result)
        self._report(obj, work, index)
        root = index if root is None else root
        if not positive and not self.config.point_prompts:
            return root  # a box edit that removes: this slice only (re-propagating it shrank whole organs)
        return self._propagate_edit(obj, work, index, result, root)

    def _propagate_edit(self, obj: SegmentObject, work: np.ndarray, index: int, result: np.ndarray, root: int) -> int:
        """After slice ``index`` changed to ``result``: update the slices farther from the first
        prompted slice ``root`` (they were derived from this one); returns ``root``."""
        directions = (-1, 1) if index == root else (int(np.sign(index - root)),)
        last = work.shape[self.axis] - 1
        for direction in directions:
            limits = (0, index) if direction < 0 else (index, last)
            if result.any():
                self._propagate(obj, work, index, result, limits, directions=(direction,), stop_when_unchanged=True)
            else:  # the object ends here: nothing beyond it
                beyond = [slice(None)] * 3
                beyond[self.axis] = slice(0, index) if direction < 0 else slice(index + 1, None)
                work[tuple(beyond)] = False
        return root

    def _continued_box(self, work: np.ndarray, index: int, row: int, col: int) -> tuple[int, int, int, int]:
        """For an include click on an empty slice: the box of the nearest slice with mask, grown to
        hold the click (a box-only model's object must start from a box)."""
        filled = np.flatnonzero(work.any(axis=tuple(a for a in range(3) if a != self.axis)))
        if filled.size == 0:
            raise PromptError(
                f"{self.config.name} takes a box first (it was trained on boxes): draw a box around "
                "the object; clicks then correct it"
            )
        nearest = self.plane.take(work, int(filled[np.argmin(np.abs(filled - index))]))
        return edited_box(nearest, row, col, True, self.box_margin)

    def _propagate(
        self,
        obj: SegmentObject,
        work: np.ndarray,
        start: int,
        plane: np.ndarray,
        limits: tuple[int, int],
        directions: tuple[int, ...] = (-1, 1),
        stop_when_unchanged: bool = False,
    ) -> None:
        """Segment the slices on both sides of ``start``, each from the box of its neighbour's mask,
        until the object vanishes, the limits, or (``stop_when_unchanged``) a slice whose new mask
        agrees with the one it already had (Dice >= ``UNCHANGED_DICE``)."""
        for step in directions:
            previous, index = plane, start + step
            while limits[0] <= index <= limits[1]:
                current = self.predictor.segment(
                    index, box=box_of(previous, self.box_margin, previous.shape), min_score=self.min_score
                )
                before = self.plane.take(work, index)
                self.plane.put(work, index, np.zeros_like(plane) if current is None else current)
                self._report(obj, work, index)
                if current is None or (stop_when_unchanged and dice(current, before) >= UNCHANGED_DICE):
                    break
                previous, index = current, index + step

    def _report(self, obj: SegmentObject, work: np.ndarray, index: int) -> None:
        """Tell ``progress`` (if set) that slice ``index`` was segmented, with the label values it
        will show; the callback may raise to cancel the interaction (nothing is applied)."""
        if self.progress is None:
            return
        region = tuple(slice(index, index + 1) if a == self.axis else slice(0, n) for a, n in enumerate(work.shape))
        values = self.labels[region].copy()
        inside = work[region]
        values[inside & (values < obj.label)] = obj.label
        values[~inside & (values == obj.label)] = 0
        self.progress(Progress(self.timings.slices, self._total, region, values))
