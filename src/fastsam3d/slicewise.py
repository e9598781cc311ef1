"""2D SAMs on volumes: segment one slice from a box or clicks, then propagate slice by slice.

    session = SliceSession("litemedsam")
    session.set_image("ct.nii.gz")
    session.set_box((40, 50, 18), (90, 110, 18))     # a box on slice 18: segmented, then propagated
    session.add_click((70, 80, 22), positive=False)  # correct slice 22, re-propagate from there

:class:`SliceSession` has the verbs, objects, undo/redo, label map and :class:`~.interaction.
Interaction` answers of the 3D :class:`~fastsam3d.session.Session`, so the CLI, the server and
the viewers drive both alike.

Slices are cut across ``axis`` (default: the input axis closest to superior-inferior, i.e. axial
slices) and shown to the model as a radiologist sees them (rows towards posterior/inferior,
columns towards patient left) with square physical pixels: the slice is resized so its longer
physical side is the model's input size, padded, and the low-res logits are mapped back to the
slice grid by the same two bilinear (align_corners=False) maps SAM uses, composed into one
matrix per axis. Each next slice is prompted with the box of the previous slice's mask (plus
``box_margin`` pixels); propagation stops where the mask vanishes or the model's predicted IoU
falls below ``min_score``, or at the box's slice range when the box spans several slices. Slice
embeddings are cached (float16, bounded in MB), so a correction re-propagates at decoder cost.

Clicks on box-only models (LiteMedSAM, MedSAM) become box edits:

* an include click on a slice with mask grows the slice's box to contain it (plus ``box_margin``);
* an include click on a slice without mask takes the box of the nearest slice that has mask,
  grown to contain it (the object continues there);
* an exclude click inside the mask moves the nearest box edge past it and drops the connected
  part that still covers it, on its slice only (propagating the cut to the neighbours shrank
  whole organs: liver Dice 0.908 -> 0.848 on the development CT);
* an object's first prompt must be a box: these models were trained on boxes only, and a box
  guessed around a single click segmented the development CT's organs with Dice 0.2-0.3.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from .cache import CacheView
from .clicks import dice
from .errors import PromptError
from .interaction import Frame, Interaction, ObjectEngine, Progress, SegmentObject, Timings, Uncertainty, binary_entropy
from .io import Volume, check_finite, read_volume
from .labelmap import Region, Slices, bounding_box
from .modeling.precision import apply_precision
from .modeling.sam2d import Sam2D
from .preprocess import canonical_axes, upsampling_weights
from .registry import load_model
from .strokes import Stroke, sampled

CT_WINDOW = (-160.0, 240.0)  # soft-tissue window (level 40, width 400), as MedSAM prepares CT
UNCHANGED_DICE = 0.98  # a corrective click's propagation stops at a slice that changes less than this
MIN_SCORE = 0.7  # see docs/benchmarks.md "2D models on volumes": stops propagation past the object's end
EMBEDDING_DTYPE = torch.float16  # cached slice embeddings: half the memory
SCRIBBLE_CLICKS = 8  # clicks a scribble becomes, spread along it
Click2D = tuple[float, float, bool]  # (row, col, positive) on a slice's display grid


@dataclass(frozen=True)
class SliceState:
    """One step of an object's history: its mask as packed bits inside its bounding box, the clicks
    per slice (models trained with clicks) and the first prompted slice (propagation flows away
    from it)."""

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


class SliceSession(ObjectEngine):
    """Interactive 3D segmentation with a 2D SAM, slice by slice (see the module docstring).

    Args:
        model: a 2D model name (``litemedsam``, ``medsam``, ``sam-vit-b``, ``sam-med2d``) or a
            loaded :class:`Sam2D` (its ``config`` gives the input convention).
        axis: input axis the slices are cut across (default: the one closest to S-I).
        box_margin: pixels added around a slice's mask to prompt its neighbour.
        min_pixels: a slice mask smaller than this ends the object.
        min_score: a propagated slice whose predicted IoU (the model's own score) is lower ends the
            object (0 turns the check off).
        cache_mb: slice embeddings kept (LRU; LiteMedSAM: 2 MB per slice).
        precision: the image encoder's arithmetic, ``"fp32"`` (default), ``"int8"`` or ``"bf16"``
            (:mod:`fastsam3d.modeling.precision`; see ``benchmarks/slicewise.py`` for their cost).
        feature_cache: keep the slice embeddings in this view of a cache shared with other sessions
            (:mod:`fastsam3d.cache`) instead of a cache of the session's own.
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
        precision: str = "fp32",
        min_score: float = MIN_SCORE,
        feature_cache: CacheView | None = None,
    ) -> None:
        super().__init__()
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if isinstance(model, str):
            model = load_model(model, checkpoint, device=self.device)
        if model.config.spatial_dims != 2:
            raise ValueError(f"{model.config.name} is a 3D model: open it in a Session")
        self.model, self.config = model.to(self.device).eval(), model.config
        encoder = getattr(self.model, "image_encoder", self.model)
        if precision != getattr(encoder, "precision", "fp32"):
            apply_precision(encoder, precision)
        self.precision = getattr(encoder, "precision", "fp32")
        self.requested_axis = axis
        self.box_margin = box_margin
        self.min_pixels = min_pixels
        self.min_score = min_score
        self.cache_bytes = int(cache_mb * 2**20)
        self._total: int | None = None  # slices the running interaction will segment, when known
        self.encoder_runs = 0
        self.decoder_runs = 0
        # slice embeddings: a view of a cache shared with other sessions (fastsam3d.cache), or its own
        self._embeddings: OrderedDict[int, torch.Tensor] | CacheView = (
            OrderedDict() if feature_cache is None else feature_cache
        )

    # --- image and objects --------------------------------------------------------------

    def set_image(self, image: Volume | str | Path) -> Volume:
        """Load (or take) the volume; clears objects and cached embeddings."""
        volume = image if isinstance(image, Volume) else read_volume(image)
        check_finite(volume)
        self._start_image(volume)
        axes, signs = canonical_axes(volume.direction)
        self.axis = self.requested_axis if self.requested_axis is not None else axes[2]
        if self.axis not in (0, 1, 2):
            raise PromptError(f"slice axis must be 0, 1 or 2, got {self.axis}")
        ras = axes.index(self.axis)
        # in-plane display axes: (input axis, sign) for rows and columns
        rows_ras, cols_ras = {2: (1, 0), 1: (2, 0), 0: (2, 1)}[ras]
        self._rows = (axes[rows_ras], -signs[rows_ras])
        self._cols = (axes[cols_ras], -signs[cols_ras])
        self._window = _intensity_window(volume.array)
        self._embeddings.clear()
        spacing_rows, spacing_cols = volume.spacing[self._rows[0]], volume.spacing[self._cols[0]]
        height, width = volume.shape[self._rows[0]], volume.shape[self._cols[0]]
        scale = self.config.img_size / max(height * spacing_rows, width * spacing_cols)
        resized = (max(1, round(height * spacing_rows * scale)), max(1, round(width * spacing_cols * scale)))
        self.geometry = SliceGeometry(height, width, resized, self.config.img_size, self.model.low_res_size[0])
        self._to_model = [torch.from_numpy(m).float().to(self.device) for m in self.geometry.to_model()]
        self._from_low_res = [torch.from_numpy(m).float().to(self.device) for m in self.geometry.from_low_res()]
        return volume

    # --- prompts ------------------------------------------------------------------------

    def needs_encoder(self, point, *, label: int | None = None) -> bool:
        """Whether a click at this voxel would run the image encoder (its slice is not cached)."""
        return round(self.to_index(point)[self.axis]) not in self._embeddings

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
        corners = [self._in_plane(low), self._in_plane(high)]
        rows = sorted(round(c[0]) for c in corners)
        cols = sorted(round(c[1]) for c in corners)
        self._total = None if one_slice else limits[1] - limits[0] + 1
        first = self._segment(start, box=(rows[0], cols[0], rows[1], cols[1]))
        if first is None:
            raise PromptError("the model found nothing inside the box")
        self._write(work, start, first)
        self._report(obj, work, start)
        self._propagate(obj, work, start, first, limits)
        return start

    def _apply_stroke(self, obj: SegmentObject, stroke: Stroke) -> Interaction:
        """A lasso becomes its slice's mask (its area, plus what the model finds inside the area's
        box near it), then propagation; a scribble becomes clicks along it (a box-only model's empty
        object starts from the scribble's box). The stroke's own voxels end up inside (include) or
        outside (exclude) the mask; an exclude lasso edits its slice only. See docs/prompts.md."""
        if stroke.kind == "lasso" and stroke.axis != self.axis:
            raise PromptError(
                f"a 2D model takes a lasso on a slice across axis {self.axis}; this one lies across axis {stroke.axis}"
            )
        state = obj.state
        work = self._mask_of(state)
        clicks = {k: list(v) for k, v in state.clicks}
        root = state.root
        self.timings = Timings()
        self._total = None
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
        area = np.zeros(self._slice(work, index).shape, dtype=bool)
        area[self._pixels(stroke.voxels)] = True
        current = self._slice(work, index)
        if not stroke.positive:
            self._write(work, index, current & ~area)
            self._report(obj, work, index)
            return root
        found = self._segment(index, box=_box_of(area, self.box_margin, area.shape))
        near = ndimage.binary_dilation(area, iterations=self.box_margin)
        result = area | (near & (found if found is not None else area))
        self._write(work, index, result)
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
        state = obj.state
        work = self._mask_of(state)
        clicks = {k: list(v) for k, v in state.clicks}
        root = state.root
        self.timings = Timings()
        self._total = None
        for index, positive in zip(indices, positives, strict=True):
            root = self._click(obj, work, clicks, root, index, positive)
        return self._commit(obj, work, clicks, root)

    def set_mask(self, mask: np.ndarray, *, label: int | None = None) -> Interaction:
        """Start an object from an existing mask on the input grid (refined by later clicks)."""
        volume = self._require_image()
        mask = np.asarray(mask)
        if mask.shape != volume.shape:
            raise PromptError(f"initial mask has shape {mask.shape}, the image {volume.shape}")
        if not mask.any():
            raise PromptError("the initial mask is empty")
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
        generator = torch.Generator().manual_seed(seed)
        mask = self._mask_of(obj.state)
        clicks = dict(obj.state.clicks)
        box = _grown(region[0], self.axis, self.box_margin, mask.shape)
        probability = np.zeros(tuple(s.stop - s.start for s in box), dtype=np.float32)
        one_slice = np.zeros(tuple(1 if a == self.axis else n for a, n in enumerate(mask.shape)), dtype=np.float32)
        in_plane = tuple(slice(0, 1) if a == self.axis else s for a, s in enumerate(box))
        for index in range(box[self.axis].start, box[self.axis].stop):
            plane = self._slice(mask, index)
            if plane.any():
                self._write(
                    one_slice,
                    0,
                    self._sampled_probability(index, plane, clicks.get(index, ()), samples, jitter_mm, generator),
                )
                target = [slice(None)] * 3
                target[self.axis] = slice(index - box[self.axis].start, index - box[self.axis].start + 1)
                probability[tuple(target)] = one_slice[in_plane]
        self.timings = Timings(decoder=time.perf_counter() - started)
        return Uncertainty(box, probability, binary_entropy(probability))

    def cached_bytes(self) -> int:
        """Memory held by the cached slice embeddings."""
        return sum(e.element_size() * e.nelement() for e in self._embeddings.values())

    # --- interaction internals ----------------------------------------------------------

    def _empty_state(self) -> SliceState:
        return SliceState()

    def _compute_regions(self, state: SliceState) -> list[Region]:
        region = state.region()
        return [] if region is None else [region]

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
        row, col = self._in_plane(point)
        pixel = round(row), round(col)
        current = self._slice(work, index)
        if self.config.point_prompts:
            clicks.setdefault(index, []).append((row, col, positive))
            box = _box_of(current, self.box_margin, current.shape) if current.any() else None
            result = self._segment(index, box=box, clicks=clicks[index])
        elif positive and not current.any():
            result = self._segment(index, box=self._continued_box(work, index, *pixel))
        else:
            box = self._edited_box(current, *pixel, positive)
            if box is None:  # an exclude click outside the mask: nothing to remove
                return root
            result = self._segment(index, box=box)
        result = np.zeros(current.shape, bool) if result is None else result
        if not positive and result[pixel]:  # the excluded pixel must go
            components, _ = ndimage.label(result)
            result = result & (components != components[pixel])
        self._write(work, index, result)
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
        nearest = self._slice(work, int(filled[np.argmin(np.abs(filled - index))]))
        return self._edited_box(nearest, row, col, True)

    def _edited_box(self, current: np.ndarray, row: int, col: int, positive: bool) -> tuple[int, int, int, int] | None:
        if positive:
            r0, c0, r1, c1 = _box_of(current, self.box_margin, current.shape)
            m = self.box_margin
            return (
                max(min(r0, row - m), 0),
                max(min(c0, col - m), 0),
                min(max(r1, row + m), current.shape[0] - 1),
                min(max(c1, col + m), current.shape[1] - 1),
            )
        if not current[row, col]:
            return None
        r0, c0, r1, c1 = _box_of(current, 0, current.shape)
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
                current = self._segment(
                    index, box=_box_of(previous, self.box_margin, previous.shape), min_score=self.min_score
                )
                before = self._slice(work, index)
                self._write(work, index, np.zeros_like(plane) if current is None else current)
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

    # --- model --------------------------------------------------------------------------

    def _embedding(self, index: int) -> torch.Tensor:
        """The embedding of slice ``index``, computed once and cached (LRU, bounded in MB)."""
        if index in self._embeddings:
            self._embeddings.move_to_end(index)
            return self._embeddings[index]
        started = time.perf_counter()
        plane = torch.from_numpy(np.ascontiguousarray(self._slice(self.volume.array, index), dtype=np.float32))
        low, high = self._window
        plane = ((plane.to(self.device) - low) / max(high - low, 1e-6)).clamp_(0, 1)
        image = self._to_model[0] @ plane @ self._to_model[1].T
        low, high = image.min(), image.max()
        image = (image - low) / torch.clamp(high - low, min=1e-8) * self.config.pixel_scale
        mean = torch.tensor(self.config.pixel_mean, device=self.device).view(3, 1, 1)
        std = torch.tensor(self.config.pixel_std, device=self.device).view(3, 1, 1)
        rgb = (image.expand(3, -1, -1) - mean) / std
        size = self.config.img_size
        padded = torch.zeros(1, 3, size, size, device=self.device)
        padded[0, :, : rgb.shape[1], : rgb.shape[2]] = rgb
        with torch.inference_mode():
            embedding = self.model.encode(padded).to(EMBEDDING_DTYPE)
        self.timings.encoder += time.perf_counter() - started
        self.encoder_runs += 1
        self._embeddings[index] = embedding
        while len(self._embeddings) > 1 and self.cached_bytes() > self.cache_bytes:
            self._embeddings.popitem(last=False)
        return embedding

    def _prompts(self, box=None, clicks=()) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
        """(boxes (1, 4), coords (1, N, 2), labels (1, N)) in model input pixels."""
        boxes = coords = labels = None
        if box is not None:
            x0, y0 = self.geometry.point_to_model(box[0], box[1])
            x1, y1 = self.geometry.point_to_model(box[2], box[3])
            boxes = torch.tensor([[x0, y0, x1, y1]], dtype=torch.float32, device=self.device)
        if clicks:
            coords = torch.tensor(
                [[self.geometry.point_to_model(r, c) for r, c, _ in clicks]], dtype=torch.float32, device=self.device
            )
            labels = torch.tensor([[int(p) for _, _, p in clicks]], device=self.device)
        return boxes, coords, labels

    def _logits(self, index: int, boxes, coords, labels) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits (B, H, W) on the slice grid and predicted IoUs (B,) for a batch of prompts on
        slice ``index``."""
        embedding = self._embedding(index).float()
        started = time.perf_counter()
        with torch.inference_mode():
            low_res, scores = self.model.decode(embedding, coords, labels, boxes=boxes)
            logits = self._from_low_res[0] @ low_res[:, 0].float() @ self._from_low_res[1].T
        self.decoder_runs += 1
        self.timings.decoder += time.perf_counter() - started
        return logits, scores[:, 0]

    def _segment(self, index: int, box=None, clicks=None, min_score: float = 0.0) -> np.ndarray | None:
        """Mask (H, W) of one slice from a (row0, col0, row1, col1) box and/or clicks; None if empty
        or if the model's predicted IoU is below ``min_score``."""
        logits, scores = self._logits(index, *self._prompts(box, clicks))
        plane = (logits[0] > 0).cpu().numpy()
        self.timings.slices += 1
        return plane if plane.sum() >= self.min_pixels and float(scores[0]) >= min_score else None

    def _sampled_probability(
        self, index: int, plane: np.ndarray, clicks, samples: int, jitter_mm: float, generator: torch.Generator
    ) -> np.ndarray:
        """Mean foreground probability of one slice over copies of its prompts moved by up to
        ``jitter_mm`` (the first copy unmoved when ``samples`` is 1)."""
        boxes, coords, labels = self._prompts(_box_of(plane, self.box_margin, plane.shape), clicks)
        pixel_mm = torch.tensor(self._model_pixel_mm(), dtype=torch.float32)  # (x, y) millimetres per model pixel
        spread = (jitter_mm / pixel_mm).repeat(2)
        boxes = boxes + (torch.rand((samples, 4), generator=generator) * 2 - 1) * spread
        if coords is not None:
            coords = coords + (torch.rand((samples, *coords.shape[1:]), generator=generator) * 2 - 1) * spread[:2]
            labels = labels.expand(samples, -1)
        return torch.sigmoid(self._logits(index, boxes, coords, labels)[0]).mean(0).cpu().numpy()

    def _model_pixel_mm(self) -> tuple[float, float]:
        """Millimetres per model input pixel along x (columns) and y (rows)."""
        spacing = self.volume.spacing
        geometry = self.geometry
        return (
            float(spacing[self._cols[0]]) * geometry.width / geometry.resized[1],
            float(spacing[self._rows[0]]) * geometry.height / geometry.resized[0],
        )

    # --- slice geometry -----------------------------------------------------------------

    def _in_plane(self, point: np.ndarray) -> tuple[float, float]:
        """Voxel -> (row, col) on its slice's display grid."""
        (ra, rs), (ca, cs) = self._rows, self._cols
        shape = self.volume.shape
        row = point[ra] if rs > 0 else shape[ra] - 1 - point[ra]
        col = point[ca] if cs > 0 else shape[ca] - 1 - point[ca]
        return float(row), float(col)

    def _pixels(self, voxels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(M, 3) voxels -> their (rows, cols) on their slices' display grid."""
        (ra, rs), (ca, cs) = self._rows, self._cols
        shape = self.volume.shape
        rows = voxels[:, ra] if rs > 0 else shape[ra] - 1 - voxels[:, ra]
        cols = voxels[:, ca] if cs > 0 else shape[ca] - 1 - voxels[:, ca]
        return rows, cols

    def _slice(self, array: np.ndarray, index: int) -> np.ndarray:
        """The (H, W) display-oriented slice ``index`` of a volume-shaped array."""
        (ra, rs), (_, cs) = self._rows, self._cols
        plane = np.take(array, index, axis=self.axis)
        remaining = [a for a in range(3) if a != self.axis]
        plane = plane if remaining.index(ra) == 0 else plane.T
        return plane[:: 1 if rs > 0 else -1, :: 1 if cs > 0 else -1]

    def _write(self, array: np.ndarray, index: int, plane: np.ndarray) -> None:
        """Store a display-oriented (H, W) plane as slice ``index`` of ``array`` (inverse of :meth:`_slice`)."""
        (ra, rs), (_, cs) = self._rows, self._cols
        plane = plane[:: 1 if rs > 0 else -1, :: 1 if cs > 0 else -1]
        remaining = [a for a in range(3) if a != self.axis]
        where = [slice(None)] * 3
        where[self.axis] = index
        array[tuple(where)] = plane if remaining.index(ra) == 0 else plane.T


def _box_of(plane: np.ndarray, margin: int, shape: tuple[int, int]) -> tuple[int, int, int, int]:
    rows, cols = np.nonzero(plane)
    return (
        max(int(rows.min()) - margin, 0),
        max(int(cols.min()) - margin, 0),
        min(int(rows.max()) + margin, shape[0] - 1),
        min(int(cols.max()) + margin, shape[1] - 1),
    )


def _grown(box: Slices, axis: int, margin: int, shape: tuple[int, int, int]) -> Slices:
    """``box`` grown by ``margin`` voxels in-plane (the uncertainty band around the object)."""
    return tuple(
        s if a == axis else slice(max(s.start - margin, 0), min(s.stop + margin, n))
        for a, (s, n) in enumerate(zip(box, shape, strict=True))
    )


def _intensity_window(array: np.ndarray) -> tuple[float, float]:
    """CT (minimum below -500 HU): the soft-tissue window; otherwise the 0.5-99.5 percentiles of
    the non-zero voxels (of at most ~1M of them, evenly strided). Each slice is min-max scaled
    again after windowing."""
    if float(array.min()) < -500:
        return CT_WINDOW
    sample = array.ravel()[:: max(1, array.size // 2**20)]
    values = sample[sample > 0] if (sample > 0).any() else sample
    low, high = np.percentile(values.astype(np.float32), [0.5, 99.5])
    return float(low), float(high)
