"""The interactive engine: one volume, several objects, clicks, undo/redo, cached embeddings.

    session = Session("default")
    session.set_image("ct.nii.gz")
    obj = session.add_object("liver")
    session.add_click((120, 200, 45))                  # input voxel index (i, j, k), include
    session.add_click((130, 190, 45), positive=False)  # exclude
    session.undo()
    session.save_labels("seg.nii.gz")

Per object the engine keeps immutable :class:`ObjectState` snapshots (prompts and the low-res
logits of each ROI it touched), so undo/redo are list moves and the masks on the input grid are
derived from the logits on demand. The :class:`~fastsam3d.predictor.RoiPredictor` computes each
ROI's image embedding once: a click inside a cached ROI runs only the prompt encoder and decoder,
then the result is pasted back onto the covered input voxels (:mod:`fastsam3d.preprocess`).

Zoom: a model trained at two ROI spacings (the ``default``: 1.5 and 3 mm) starts each object in
the fine ROI, where a small structure keeps its detail; when the mask reaches a face of the fine
ROI inside the volume, the object moves to the coarse ROI (one encoder pass) and from there grows
into neighbouring ROIs as needed. A click inside a cached ROI stays a decoder pass at either scale.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from .cache import CacheView
from .errors import PromptError
from .interaction import Frame, Interaction, ObjectEngine, Progress, SegmentObject, Timings, Uncertainty, binary_entropy
from .io import Volume, check_finite, read_volume
from .labelmap import PackedMask, Region, Slices, merge_max, union_box
from .modeling import Sam3D
from .predictor import RoiPredictor
from .preprocess import RoiGrid
from .registry import load_model, spatial_dims
from .runtime import apply_model_precision
from .stages import staged
from .strokes import LASSO_BAND, Stroke, interior_points, sampled

UNCERTAINTY_BATCH = 4  # decoder runs per batched call: bounds memory, keeps the speed of batching
HISTORY_DTYPE = torch.float16  # logits kept in the history: half the memory, ~1e-3 relative precision
MIN_FACE_VOXELS = 4  # low-res foreground voxels on a ROI face for the object to grow across it
SPARSE_STROKE_POINTS = 5  # points a stroke becomes for models trained with a few clicks (3D SAMs)


@dataclass(frozen=True)
class Click:
    """A point prompt at a continuous input voxel index (i, j, k)."""

    index: tuple[float, float, float]
    positive: bool = True


@dataclass(frozen=True)
class ObjectState:
    """One step of an object's history: its prompts and the resulting low-res logits per ROI."""

    clicks: tuple[Click, ...] = ()
    box: tuple[tuple[int, int, int], tuple[int, int, int]] | None = None  # inclusive voxel corners
    initial_mask: PackedMask | None = field(
        default=None, compare=False, repr=False
    )  # a mask given (or restored) as a prompt
    logits: tuple[tuple[RoiGrid, torch.Tensor], ...] = field(default=(), compare=False, repr=False)
    seeds: tuple[tuple[tuple, Click], ...] = ()  # (ROI key, positive click) placed when an object grew into a new ROI
    strokes: tuple[Stroke, ...] = ()  # scribbles and lassos, each ordered among the clicks by its after_clicks


class Session(ObjectEngine):
    """Interactive segmentation of one volume with a 3D SAM.

    Args:
        model: a model name, checkpoint path, or a loaded :class:`Sam3D`.
        device: torch device; default CUDA when available.
        click_history: ``"all"`` feeds every click of the object inside the ROI with the previous
            logits (as SAM-Med3D training does); ``"last"`` feeds only the newest click with the
            previous logits (the FastSAM3D / SAM-Med3D evaluation protocol, docs/reference.md fact 5).
        cache_size: how many ROI embeddings to keep.
        cache_mb: and at most this many megabytes of them (the newest is always kept).
        max_rois: how many ROIs one object may span. A mask that reaches a ROI face inside the
            volume continues into the neighbouring ROI (one encoder run each) until this limit;
            1 keeps every object inside the ROI of its first click.
        feature_cache: keep the ROI embeddings in this view of a cache shared with other sessions
            (:mod:`fastsam3d.cache`; a server's one budget) instead of a cache of the session's own.
        zoom: start objects in the model's finer ROI and zoom out when the mask reaches its faces
            (models trained at several ROI spacings, on volumes finer than the coarse one); False
            keeps the model's coarse ROI.
        precision: ``"auto"`` (the fastest that keeps the masks on this device: torch's int8 for the
            official-size 3D SAM encoders on a CPU, fp32 otherwise; see docs/models.md "Precision"),
            ``"fp32"``, ``"bf16"``, ``"int8"``, ``"onnx-fp32"`` or ``"onnx-int8"``. Default: ``"auto"`` for a model given
            by name; a model object is used as it is unless a precision is given (then it is
            converted in place). The one in use is ``session.precision``.
    """

    dims = 3

    def __init__(
        self,
        model: Sam3D | str | Path = "default",
        device: str | torch.device | None = None,
        *,
        click_history: str = "all",
        cache_size: int = 8,
        checkpoint: str | Path | None = None,
        max_rois: int = 4,
        cache_mb: float = 512.0,
        precision: str | None = None,
        zoom: bool = True,
        feature_cache: CacheView | None = None,
    ) -> None:
        super().__init__()
        if click_history not in ("all", "last"):
            raise ValueError("click_history must be 'all' or 'last'")
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if isinstance(model, (str, Path)):
            model = load_model(model, checkpoint=checkpoint, device=self.device, precision=precision or "auto")
        elif precision is not None:
            model = apply_model_precision(model.to(self.device), precision, self.device)
        self.precision = getattr(model, "precision", "fp32")
        if self.precision in ("int8", "onnx-fp32", "onnx-int8") and self.device.type != "cpu":
            raise ValueError(f"the model runs in {self.precision}, which needs the CPU, not {self.device}")
        self.model = model.to(self.device).eval()
        self.click_history = click_history
        self.max_rois = max(1, max_rois)
        self.zoom = zoom
        self.predictor = RoiPredictor(self.model, self.device, cache_size, cache_mb, feature_cache)

    @property
    def encoder_runs(self) -> int:
        return self.predictor.encoder_runs

    @property
    def decoder_runs(self) -> int:
        return self.predictor.decoder_runs

    def cached_bytes(self) -> int:
        """Memory held by the cached ROI embeddings."""
        return self.predictor.cached_bytes()

    # --- image and objects ------------------------------------------------------------

    def set_image(self, image: Volume | str | Path) -> Volume:
        """Load (or take) the volume; clears objects and cached embeddings."""
        volume = image if isinstance(image, Volume) else read_volume(image)
        check_finite(volume)
        self._start_image(volume)
        self.predictor.set_image(volume)
        return volume

    # --- prompts ----------------------------------------------------------------------

    def add_click(
        self,
        point,
        positive: bool = True,
        *,
        frame: Frame = "voxel",
        label: int | None = None,
        roi_centre=None,
    ) -> Interaction:
        """Add an include (``positive``) or exclude click to an object and update its mask.

        ``point`` is an input voxel index (i, j, k) (ITK index order = nibabel ``data[i, j, k]``),
        or world millimetres with ``frame="lps"`` (as ITK / Slicer) or ``frame="ras"`` (as nibabel).
        A click outside the object's ROIs opens a new ROI centred on the click, or on
        ``roi_centre`` (input voxels) when given and the click lies inside that ROI.
        """
        index = self.to_index(point, frame)
        obj = self._object_for_prompt(label)
        state = obj.state
        clicks = state.clicks + (Click(tuple(float(v) for v in index), positive),)
        rois = [roi for roi, _ in state.logits if roi.contains(index)[0]]
        if not rois:
            spacing = self._object_spacing(state)
            roi = self._new_roi(index if roi_centre is None else self.to_index(roi_centre), spacing)
            rois = [roi if roi.contains(index)[0] else self._new_roi(index, spacing)]
        return self._update(obj, replace(state, clicks=clicks), rois)

    def add_clicks(self, points, positives, *, frame: Frame = "voxel", label: int | None = None) -> Interaction:
        """Several clicks as one interaction: one undo step, one decoder pass per ROI they touch
        (work linear in their number). Every point is checked before any is applied."""
        indices, positives = self._checked_clicks(points, positives, frame)
        obj = self._object_for_prompt(label)
        state = obj.state
        clicks = state.clicks + tuple(
            Click(tuple(float(v) for v in i), p) for i, p in zip(indices, positives, strict=True)
        )
        rois: dict[tuple, RoiGrid] = {}
        spacing = self._object_spacing(state)
        for index in indices:
            inside = [roi for roi, _ in state.logits if roi.contains(index)[0]]
            inside = inside or [roi for roi in rois.values() if roi.contains(index)[0]]
            inside = inside or [self._new_roi(index, spacing)]
            rois.update((roi.key, roi) for roi in inside)
        return self._update(obj, replace(state, clicks=clicks), list(rois.values()))

    def needs_encoder(self, point, *, label: int | None = None) -> bool:
        """Whether a click at this voxel would run the image encoder (its ROI is not cached yet).
        Lets a UI run cached clicks at once and send encoder passes to a worker thread."""
        index = self.to_index(point)
        state = self.objects[label if label is not None else self.active].state if self.objects else ObjectState()
        rois = [roi for roi, _ in state.logits if roi.contains(index)[0]]
        rois = rois or [self._new_roi(index, self._object_spacing(state))]
        return not all(self.predictor.is_cached(roi) for roi in rois)

    def set_box(
        self, corner_a, corner_b, *, label: int | None = None, depth_mm: float | None = None, roi_centre=None
    ) -> Interaction:
        """Prompt an object with a 3D box given by two opposite corner voxels (inclusive). A box
        drawn on one slice gets ``depth_mm`` through it (default: the mean of its two sides in mm).

        Models with box embeddings encode it; for the official weights, which have none, the box
        is emulated: a positive click at its centre, and the mask is clipped to the box.
        """
        if depth_mm is None:
            a, b = self.to_index(corner_a), self.to_index(corner_b)
            sides = np.abs(a - b) * self._require_image().spacing
            depth_mm = float(np.mean(np.sort(sides)[1:]))
        low, high = self._box_corners(corner_a, corner_b, depth_mm)
        flat = [axis for axis in range(3) if high[axis] == low[axis]]
        if flat:
            raise PromptError(f"box {low.tolist()}-{high.tolist()} has no extent along axis {flat[0]}")
        obj = self._object_for_prompt(label)
        state = replace(obj.state, box=(tuple(low.tolist()), tuple(high.tolist())))
        centre = (low + high) / 2.0
        rois = [roi for roi, _ in obj.state.logits if roi.contains(low)[0] and roi.contains(high)[0]]
        if not rois:
            centre = centre if roi_centre is None else self.to_index(roi_centre)
            spacing = self._object_spacing(obj.state)
            fine = self._new_roi(centre, spacing)
            fits = fine.contains(low, margin=2)[0] and fine.contains(high, margin=2)[0]
            rois = [fine if fits else self._new_roi(centre, self._spacings()[-1])]
        return self._update(obj, state, rois)

    def _apply_stroke(self, obj: SegmentObject, stroke: Stroke) -> Interaction:
        """Decode the object with the stroke added, in the ROIs it touches (a new one around it, fine
        when it fits the fine ROI, else coarse), plus new ROIs for any of its voxels left outside."""
        state = obj.state
        stroke = replace(stroke, after_clicks=len(state.clicks))
        voxels = stroke.voxels
        rois = [roi for roi, _ in state.logits if roi.contains(voxels).any()]
        if not rois:
            low, high = voxels.min(0), voxels.max(0)
            fine = self._new_roi((low + high) / 2.0, self._object_spacing(state))
            fits = fine.contains(np.stack([low, high]), margin=2).all()
            rois = [fine if fits else self._new_roi((low + high) / 2.0, self._spacings()[-1])]
        rois = self._cover(rois, voxels, self._roi_spacing(rois[0]))
        return self._update(obj, replace(state, strokes=state.strokes + (stroke,)), rois)

    def set_mask(self, mask: np.ndarray, *, label: int | None = None) -> Interaction:
        """Start an object from an existing mask on the input grid (refined by later clicks)."""
        volume = self._require_image()
        mask = np.asarray(mask)
        if mask.shape != volume.shape:
            raise PromptError(f"initial mask has shape {mask.shape}, the image {volume.shape}")
        if not mask.any():
            raise PromptError("the initial mask is empty")
        obj = self._object_for_prompt(label)
        old_boxes = self._boxes(obj.state)
        obj.push(ObjectState(initial_mask=PackedMask.of(mask.astype(bool))))
        self.timings = Timings()
        return self._repaint(old_boxes, self._boxes(obj.state))

    # --- results ----------------------------------------------------------------------

    def probability(self, label: int | None = None) -> np.ndarray:
        """Foreground probability of one object on the input grid (0 outside its ROIs)."""
        obj = self._object(label)
        probability = np.zeros(self._require_image().shape, dtype=np.float32)
        for roi, logits in obj.state.logits:
            box, values = roi.paste_logits(logits[0, 0])
            np.maximum(probability[box], _sigmoid(values), out=probability[box])
        return self._clip_to_box(obj.state, probability)

    def uncertainty(
        self, samples: int = 16, jitter_mm: float = 3.0, seed: int = 0, label: int | None = None
    ) -> Uncertainty:
        """Mean foreground probability and its binary entropy (bits) over ``samples`` decoder runs.

        Each run jitters every click by up to ``jitter_mm`` millimetres per axis; all runs
        reuse the cached embedding, so this costs decoder time only (one batched decoder call per
        ROI). The mean is taken on the low-res grid and pasted like a prediction. The maps cover
        the object's ROIs (``box``); :meth:`Uncertainty.full` places them on the whole input grid.
        """
        obj = self._object(label)
        if not obj.state.logits:
            raise PromptError(f"object {obj.label} has no click yet: nothing to estimate")
        if samples < 1:
            raise PromptError("uncertainty needs at least one sample")
        generator = torch.Generator().manual_seed(seed)
        started = time.perf_counter()
        self.predictor.timings = Timings()  # an evicted embedding's encoder run is not the last click's
        pieces = []
        for roi, previous in obj.state.logits:
            coords, labels = self.predictor.points_in_roi(roi, *self._prompts(obj.state, roi))
            embedding, boxes = self.predictor.embedding(roi), self.predictor.box_in_roi(roi, obj.state.box)
            total = torch.zeros(previous.shape[2:], device=self.device)
            jitter = jitter_mm / self._roi_spacing(roi)  # ROI voxels
            for first in range(0, samples, UNCERTAINTY_BATCH):
                batch = min(UNCERTAINTY_BATCH, samples - first)
                noise = (torch.rand((batch, *coords.shape[1:]), generator=generator) * 2 - 1) * jitter
                jittered = (coords.expand(batch, -1, -1) + noise.to(self.device)).clamp(0, roi.size - 1)
                with torch.inference_mode():
                    logits, _ = self.model.decode(
                        embedding,
                        jittered,
                        labels.expand(batch, -1),
                        boxes=None if boxes is None else boxes.expand(batch, -1),
                        mask_input=previous.float().expand(batch, -1, -1, -1, -1),
                    )
                total += torch.sigmoid(logits[:, 0].float()).sum(0)
            mean = (total / samples).clamp(1e-6, 1 - 1e-6)
            box, logits = roi.paste_logits(torch.logit(mean))
            pieces.append((box, _sigmoid(logits)))
        box = union_box(piece_box for piece_box, _ in pieces)
        probability = self._clip_to_box(obj.state, merge_max(pieces, box), box)
        self.timings = Timings(decoder=time.perf_counter() - started)
        return Uncertainty(box, probability, binary_entropy(probability))

    # --- internals --------------------------------------------------------------------

    def _new_roi(self, centre_index: np.ndarray, spacing: float | None = None) -> RoiGrid:
        self._require_image()
        return self.predictor.roi_at(centre_index, spacing)

    def _spacings(self) -> tuple[float, ...]:
        """The ROI spacings (mm) objects may use on this volume, finest first: the model's zoom
        levels finer than the coarse one only where the volume has detail at that scale."""
        spacings = tuple(self.model.roi_spacings)
        coarse = spacings[-1]
        if not self.zoom or float(np.min(self._require_image().spacing)) >= coarse:
            return (coarse,)
        return spacings

    def _object_spacing(self, state: ObjectState) -> float:
        """The spacing (mm) of the object's ROIs, or the finest available for a new object."""
        return self._roi_spacing(state.logits[0][0]) if state.logits else self._spacings()[0]

    def _roi_spacing(self, roi: RoiGrid) -> float:
        """Millimetres per voxel of a ROI."""
        return round(abs(roi.step[0]) * float(self._require_image().spacing[roi.axes[0]]), 6)

    def _previous_logits(self, obj: SegmentObject, roi: RoiGrid) -> torch.Tensor | None:
        return next((logits for r, logits in obj.state.logits if r.key == roi.key), None)

    def _prompts(self, state: ObjectState, roi: RoiGrid) -> tuple[np.ndarray, list[int]]:
        """The state's point prompts inside one ROI: (N, 3) input voxel indices and their labels,
        clicks and strokes in the order they were given (a later prompt wins where they meet).

        Clicks follow ``click_history`` (``"last"``: the newest click or stroke only); a box on a
        model without box embeddings adds a positive click at its centre; seeds placed when the
        object grew into this ROI are positive clicks.
        """
        clicks = [(n, c) for n, c in enumerate(state.clicks) if roi.contains(np.array(c.index))[0]]
        strokes = list(state.strokes)
        if self.click_history == "last":
            newest_is_stroke = bool(strokes) and strokes[-1].after_clicks == len(state.clicks)
            clicks, strokes = ([], strokes[-1:]) if newest_is_stroke else (clicks[-1:], [])
        prompts = [((n, 1), np.array([c.index]), [int(c.positive)]) for n, c in clicks]
        prompts += [((s.after_clicks, 0), *self._stroke_prompts(s, roi)) for s in strokes]
        prompts.sort(key=lambda prompt: prompt[0])
        points = [p for _, group, _ in prompts for p in group]
        labels = [label for _, _, group in prompts for label in group]
        if state.box is not None and not self.model.supports_boxes:
            points.append(tuple((np.array(state.box[0]) + np.array(state.box[1])) / 2.0))
            labels.append(1)
        for key, seed in state.seeds:
            if key == roi.key:
                points.append(seed.index)
                labels.append(1)
        return np.array(points, dtype=np.float64).reshape(-1, 3), labels

    def _stroke_prompts(self, stroke: Stroke, roi: RoiGrid) -> tuple[np.ndarray, list[int]]:
        """A stroke as point prompts in one ROI (docs/prompts.md). Models trained with prompt maps
        (``dense_prompts``) get one point per ROI voxel the stroke covers, and for an include lasso
        exclude points on a band just outside its outline on its slice (given first, so the area
        wins where they meet); 3D SAMs get a few points: spread along a scribble, deep inside a lasso."""
        shape = self._require_image().shape
        if getattr(self.model, "dense_prompts", False):
            area = _one_per_cell(roi, stroke.voxels)
            if stroke.kind == "lasso" and stroke.positive:
                step = float(np.min(np.abs(roi.step)))
                band = _one_per_cell(roi, stroke.outline_band(shape, LASSO_BAND[0] * step, LASSO_BAND[1] * step))
                return np.concatenate([band, area]), [0] * len(band) + [1] * len(area)
            return area, [int(stroke.positive)] * len(area)
        if stroke.kind == "lasso":
            points = interior_points(stroke, shape, SPARSE_STROKE_POINTS)
        else:
            points = sampled(stroke.voxels.astype(np.float64), SPARSE_STROKE_POINTS)
        points = points[roi.contains(points)]
        return points, [int(stroke.positive)] * len(points)

    @staged(lambda self, obj, state, rois: "segmenting")
    def _update(self, obj: SegmentObject, state: ObjectState, rois: list[RoiGrid]) -> Interaction:
        """Decode ``state``'s prompts in ``rois`` (and grow into neighbouring ROIs where the mask
        reaches a ROI face), push the new state and repaint the label map."""
        self.timings = self.predictor.timings = Timings()
        old_boxes = self._boxes(obj.state)
        state, logits = self._decode_rois(obj, state, rois)
        coarse = self._zoom_out(state, logits)
        if coarse:
            state, logits = self._decode_rois(obj, replace(state, logits=(), seeds=()), coarse)
        started = time.perf_counter()
        obj.push(replace(state, logits=tuple(logits.values())))
        answer = self._repaint(old_boxes, self._boxes(obj.state))
        self.timings.paste += time.perf_counter() - started
        return answer

    def _decode_rois(
        self, obj: SegmentObject, state: ObjectState, rois: list[RoiGrid]
    ) -> tuple[ObjectState, dict[tuple, tuple[RoiGrid, torch.Tensor]]]:
        """Decode ``state``'s prompts in ``rois``; at the coarsest scale, grow into neighbouring ROIs
        where the mask reaches a face (up to ``max_rois``). Returns the state (with any new seeds)
        and the logits per ROI key."""
        logits = {roi.key: (roi, value) for roi, value in state.logits}
        queue = [(roi, self._previous_logits(obj, roi)) for roi in rois]
        coarsest = self._roi_spacing(rois[0]) >= self._spacings()[-1]
        while queue:
            roi, mask_input = queue.pop(0)
            logits[roi.key] = (roi, self._decode(state, roi, mask_input))
            if self.progress is not None:
                self.progress(Progress(len(logits), None))
            if not coarsest or len(logits) + len(queue) >= self.max_rois:
                continue
            for neighbour, seed, prompt in self._growth(roi, logits[roi.key][1]):
                if neighbour.key not in logits and len(logits) + len(queue) < self.max_rois:
                    state = replace(state, seeds=state.seeds + ((neighbour.key, seed),))
                    queue.append((neighbour, prompt))
        return state, logits

    def _zoom_out(self, state: ObjectState, logits: dict[tuple, tuple[RoiGrid, torch.Tensor]]) -> list[RoiGrid]:
        """The coarse ROIs to move the object to when its mask reaches a face of a finer ROI that lies
        inside the volume: one centred where that ROI was, and one at each click it leaves out
        (up to ``max_rois``); empty when the object stays where it is."""
        coarse = self._spacings()[-1]
        touching = [
            roi
            for roi, value in logits.values()
            if self._roi_spacing(roi) < coarse and _faces_reached(roi, (value[0, 0] > 0).cpu().numpy())
        ]
        if not touching:
            return []
        centre = touching[0].roi_to_index(np.full((1, 3), touching[0].size // 2))[0]  # where it was centred
        prompted = [np.array([c.index for c in state.clicks]).reshape(-1, 3)] + [s.voxels for s in state.strokes]
        return self._cover([self._new_roi(centre, coarse)], np.concatenate(prompted), coarse)

    def _cover(self, rois: list[RoiGrid], points: np.ndarray, spacing: float) -> list[RoiGrid]:
        """``rois`` plus ROIs of ``spacing`` centred on the first of ``points`` (N, 3) that none of
        them holds, in turn, up to ``max_rois``."""
        rois = list(rois)
        outside = ~np.any([roi.contains(points) for roi in rois], axis=0)
        while outside.any() and len(rois) < self.max_rois:
            rois.append(self._new_roi(points[np.flatnonzero(outside)[0]], spacing))
            outside &= ~rois[-1].contains(points)
        return rois

    def _decode(self, state: ObjectState, roi: RoiGrid, previous: torch.Tensor | None) -> torch.Tensor:
        """Low-res logits (1, 1, L, L, L) of ``state``'s prompts in one ROI (cached embedding)."""
        if previous is None and state.initial_mask is not None:
            previous = self.predictor.mask_prompt(roi, state.initial_mask.full())
        logits, _ = self.predictor.predict(roi, *self._prompts(state, roi), box=state.box, mask_input=previous)
        return logits.to(HISTORY_DTYPE)

    def _growth(self, roi: RoiGrid, logits: torch.Tensor) -> list[tuple[RoiGrid, Click, torch.Tensor]]:
        """Neighbouring ROIs for a mask that reaches a ROI face lying inside the volume.

        Each neighbour is shifted by half a ROI across that face; it is prompted with the current
        logits moved onto its grid (unknown half: logit 0) and a positive seed click at the
        interior-most foreground voxel of the overlap.
        """
        positive = (logits[0, 0] > 0).cpu().numpy()
        low_res = positive.shape[0]
        half = low_res // 2
        grown = []
        for axis, direction in _faces_reached(roi, positive):
            ahead, behind = slice(half, None), slice(0, half)
            if direction < 0:
                ahead, behind = behind, ahead
            overlap = np.zeros_like(positive)
            keep = [slice(None)] * 3
            keep[axis] = ahead
            overlap[tuple(keep)] = positive[tuple(keep)]
            depth = ndimage.distance_transform_edt(np.pad(overlap, 1))[1:-1, 1:-1, 1:-1]
            seed_low_res = np.array(np.unravel_index(np.argmax(depth), depth.shape), dtype=np.float64)
            seed = roi.low_res_grid(low_res).roi_to_index(seed_low_res)[0]
            prompt = torch.zeros_like(logits)
            moved, source = [slice(None)] * 5, [slice(None)] * 5
            moved[axis + 2], source[axis + 2] = behind, ahead
            prompt[tuple(moved)] = logits[tuple(source)]
            grown.append((roi.neighbour(axis, direction), Click(tuple(float(v) for v in seed)), prompt))
        return grown

    def _empty_state(self) -> ObjectState:
        return ObjectState()

    def _compute_regions(self, state: ObjectState) -> list[Region]:
        """The object's mask as (input box, boolean sub-array) pieces (cached by ObjectEngine._regions)."""
        if not state.logits:
            region = None if state.initial_mask is None else state.initial_mask.region()
            return [] if region is None else [region]
        regions = []
        for roi, logits in state.logits:
            box, mask = roi.paste_mask(logits[0, 0])
            if mask.any():
                regions.append((box, self._clip_to_box(state, mask, box)))
        return regions

    def _clip_to_box(self, state: ObjectState, values: np.ndarray, box: Slices | None = None) -> np.ndarray:
        """Zero everything outside the object's box prompt (for models without box embeddings)."""
        if state.box is None or self.model.supports_boxes:
            return values
        offset = [0, 0, 0] if box is None else [s.start for s in box]
        keep = tuple(
            slice(max(low - o, 0), max(high + 1 - o, 0))
            for low, high, o in zip(state.box[0], state.box[1], offset, strict=True)
        )
        clipped = np.zeros_like(values)
        clipped[keep] = values[keep]
        return clipped


def open_session(
    model: str | Path = "default",
    checkpoint: str | Path | None = None,
    device: str | torch.device | None = None,
    **options,
):
    """An interactive session for any model name: a 2D SAM (``litemedsam``, ``medsam``,
    ``sam-vit-b``, ``sam-med2d``) runs slice by slice in a :class:`~fastsam3d.slicewise.SliceSession`,
    every other model in a 3D :class:`Session`; both take the same verbs and answer alike."""
    if spatial_dims(model) == 2:
        from .slicewise import SliceSession

        return SliceSession(str(model), checkpoint=checkpoint, device=device, **options)
    return Session(model, device=device, checkpoint=checkpoint, **options)


def _faces_reached(roi: RoiGrid, positive: np.ndarray) -> list[tuple[int, int]]:
    """(ROI axis, direction -1 / +1) of each ROI face that the low-res mask ``positive`` covers with
    at least ``MIN_FACE_VOXELS`` voxels and that lies inside the volume (else nothing is beyond it)."""
    low_res = positive.shape[0]
    return [
        (axis, direction)
        for axis in range(3)
        for side, direction in ((0, -1), (low_res - 1, 1))
        if np.take(positive, side, axis=axis).sum() >= MIN_FACE_VOXELS
        and roi.face_inside_volume(axis, direction, low_res)
    ]


def _one_per_cell(roi: RoiGrid, voxels: np.ndarray) -> np.ndarray:
    """The input voxels (M, 3) inside the ROI, one per ROI cell they fall in (first seen), as floats."""
    inside = voxels[roi.contains(voxels)].astype(np.float64)
    _, first = np.unique(np.floor(roi.index_to_roi(inside)), axis=0, return_index=True)
    return inside[np.sort(first)]


def _sigmoid(values: np.ndarray) -> np.ndarray:
    """Logistic function of float32 logits, computed in place (the maps are ROI-sized)."""
    np.clip(values, -60, 60, out=values)
    np.negative(values, out=values)
    np.exp(values, out=values)
    values += 1
    return np.reciprocal(values, out=values)
