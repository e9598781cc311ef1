"""The interactive engine: one volume, several objects, clicks, undo/redo, cached embeddings.

    session = Session("default")
    session.set_image("ct.nii.gz")
    obj = session.add_object("liver")
    session.add_click((120, 200, 45))                  # input voxel index (i, j, k), include
    session.add_click((130, 190, 45), positive=False)  # exclude
    session.undo()
    session.save_labels("seg.nii.gz")

Per object the engine keeps immutable :class:`~.prompts3d.ObjectState` snapshots (prompts and the
low-res logits of each ROI it touched): undo/redo are list moves, masks are derived on demand. The
:class:`~.predictor.RoiPredictor` computes each ROI's embedding once; a click in a cached ROI runs
only the decoder, then the result is pasted onto the covered input voxels (:mod:`.roi`).

Zoom: a model trained at two ROI spacings (``default``: 1.5 and 3 mm) starts each object in the
fine ROI; when the mask reaches a fine ROI face inside the volume, or two include clicks there are
each left in a small separate part of the mask (the ROI lies inside an organ larger than itself),
the object moves to the coarse ROI (one encoder pass) and grows from there into neighbouring ROIs
as needed.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from ..configs import CPU_ONLY_PRECISIONS
from ..errors import PromptError
from ..io import Volume
from ..modeling import Sam3D
from ..registry import load_model
from ..runtime import apply_model_precision, default_device
from ..stages import staged
from .answers import Interaction, Progress, Timings, Uncertainty, binary_entropy
from .base import Frame, ObjectEngine, SegmentObject
from .cache import CacheView
from .labelmap import PackedMask, Region, merge_max, union_box
from .predictor import RoiPredictor
from .prompts3d import (
    Click,
    ObjectState,
    clicks_stranded,
    clip_to_box,
    faces_reached,
    growth,
    point_prompts,
    state_rois,
)
from .roi import RoiGrid, sigmoid_in_place
from .strokes import Stroke

HISTORY_DTYPE = torch.float16  # logits kept in the history: half the memory, ~1e-3 relative precision


class Session(ObjectEngine):
    """Interactive segmentation of one volume with a 3D SAM.

    Args:
        model: a model name, checkpoint path, or a loaded :class:`Sam3D`; ``device``: default CUDA when available.
        click_history: ``"all"`` feeds every click of the object inside the ROI with the previous
            logits (as SAM-Med3D training does); ``"last"`` only the newest (the FastSAM3D /
            SAM-Med3D evaluation protocol, docs/reference.md fact 5).
        cache_size, cache_mb: ROI embeddings kept (count and MB; the newest always), or
            ``feature_cache``, a view of a cache shared with other sessions (:mod:`.cache`).
        max_rois: how many ROIs one object may span as its mask grows across ROI faces (1: none).
        zoom: start objects in the model's finer ROI and zoom out when the mask reaches its faces or
            include clicks are stranded there (:func:`~.prompts3d.clicks_stranded`); False keeps
            the model's coarse ROI.
        precision: ``"auto"`` (default for a model given by name: the fastest that keeps the masks
            on this device, docs/models.md "Precision"), ``"fp32"``, ``"bf16"``, ``"int8"``,
            ``"onnx-fp32"``, ``"onnx-int8"`` or ``"openvino-fp32"``; a model object is converted only
            if one is given.
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
        self.device = torch.device(device or default_device())
        if isinstance(model, (str, Path)):
            model = load_model(model, checkpoint=checkpoint, device=self.device, precision=precision or "auto")
        elif precision is not None:
            model = apply_model_precision(model.to(self.device), precision, self.device)
        self.precision = getattr(model, "precision", "fp32")
        if self.precision in CPU_ONLY_PRECISIONS and self.device.type != "cpu":
            raise ValueError(f"the model runs in {self.precision}, which needs the CPU, not {self.device}")
        self.model = model.to(self.device).eval()
        self.click_history = click_history
        self.max_rois = max(1, max_rois)
        self.zoom = zoom
        self.predictor = RoiPredictor(self.model, self.device, cache_size, cache_mb, feature_cache)
        self._pastes: dict[int, tuple[torch.Tensor, Region]] = {}  # id(logits) -> (logits, pasted box and mask)

    # --- image and objects ------------------------------------------------------------

    def set_image(self, image: Volume | str | Path) -> Volume:
        """Load (or take) the volume; clears objects and cached embeddings."""
        volume = self._start_image(image)
        self.predictor.set_image(volume)
        self._pastes.clear()
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
        rois = [roi for roi in state_rois(state) if roi.contains(index)[0]]
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
            inside = [roi for roi in state_rois(state) if roi.contains(index)[0]]
            inside = inside or [roi for roi in rois.values() if roi.contains(index)[0]]
            inside = inside or [self._new_roi(index, spacing)]
            rois.update((roi.key, roi) for roi in inside)
        return self._update(obj, replace(state, clicks=clicks), list(rois.values()))

    def needs_encoder(self, point, *, label: int | None = None) -> bool:
        """Whether a click at this voxel would run the image encoder (its ROI is not cached yet).
        Lets a UI run cached clicks at once and send encoder passes to a worker thread."""
        index = self.to_index(point)
        state = self.objects[label if label is not None else self.active].state if self.objects else ObjectState()
        rois = [roi for roi in state_rois(state) if roi.contains(index)[0]]
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
        rois = [roi for roi in state_rois(obj.state) if roi.contains(low)[0] and roi.contains(high)[0]]
        if not rois:
            centre = centre if roi_centre is None else self.to_index(roi_centre)
            rois = [self._roi_around(obj.state, centre, low, high)]
        return self._update(obj, state, rois)

    def _apply_stroke(self, obj: SegmentObject, stroke: Stroke) -> Interaction:
        """Decode the object with the stroke added, in the ROIs it touches (a new one around it, fine
        when it fits the fine ROI, else coarse), plus new ROIs for any of its voxels left outside."""
        state = obj.state
        stroke = replace(stroke, after_clicks=len(state.clicks))
        voxels = stroke.voxels
        rois = [roi for roi in state_rois(state) if roi.contains(voxels).any()]
        if not rois:
            low, high = voxels.min(0), voxels.max(0)
            rois = [self._roi_around(state, (low + high) / 2.0, low, high)]
        rois = self._cover(rois, voxels, self._roi_spacing(rois[0]))
        return self._update(obj, replace(state, strokes=state.strokes + (stroke,)), rois)

    def set_mask(self, mask: np.ndarray, *, label: int | None = None) -> Interaction:
        """Start an object from an existing mask on the input grid (refined by later clicks)."""
        mask = self._checked_mask(mask)
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
            np.maximum(probability[box], sigmoid_in_place(values), out=probability[box])
        return clip_to_box(self.model, obj.state, probability)

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
            if obj.state.initial_mask is not None:
                raise PromptError(
                    f"object {obj.label} shows a saved mask: prompt it once more to estimate its uncertainty"
                )
            raise PromptError(f"object {obj.label} has no click yet: nothing to estimate")
        if samples < 1:
            raise PromptError("uncertainty needs at least one sample")
        generator = torch.Generator().manual_seed(seed)
        started = time.perf_counter()
        self.predictor.timings = Timings()  # an evicted embedding's encoder run is not the last click's
        pieces = []
        for roi, previous in obj.state.logits:
            points, labels = self._prompts(obj.state, roi)
            jitter = jitter_mm / self._roi_spacing(roi)  # ROI voxels
            mean = self.predictor.mean_probability(
                roi, points, labels, obj.state.box, previous, samples, jitter, generator
            )
            box, logits = roi.paste_logits(torch.logit(mean))
            pieces.append((box, sigmoid_in_place(logits)))
        box = union_box(piece_box for piece_box, _ in pieces)
        probability = clip_to_box(self.model, obj.state, merge_max(pieces, box), box)
        self.timings = Timings(decoder=time.perf_counter() - started)
        return Uncertainty(box, probability, binary_entropy(probability))

    # --- internals --------------------------------------------------------------------

    def _new_roi(self, centre_index: np.ndarray, spacing: float | None = None) -> RoiGrid:
        self._require_image()
        return self.predictor.roi_at(centre_index, spacing)

    def _roi_around(self, state: ObjectState, centre: np.ndarray, low: np.ndarray, high: np.ndarray) -> RoiGrid:
        """A new ROI at ``centre``: at the object's spacing if it holds ``low`` to ``high`` (2 ROI voxels
        in from its faces), else at the coarsest spacing."""
        fine = self._new_roi(centre, self._object_spacing(state))
        inside = fine.contains(np.stack([low, high]), margin=2).all()
        return fine if inside else self._new_roi(centre, self._spacings()[-1])

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
        rois = state_rois(state)
        return self._roi_spacing(rois[0]) if rois else self._spacings()[0]

    def _roi_spacing(self, roi: RoiGrid) -> float:
        """Millimetres per voxel of a ROI."""
        return round(abs(roi.step[0]) * float(self._require_image().spacing[roi.axes[0]]), 6)

    def _prompts(self, state: ObjectState, roi: RoiGrid) -> tuple[np.ndarray, list[int]]:
        """The state's point prompts in one ROI (:func:`~.prompts3d.point_prompts`)."""
        return point_prompts(state, roi, self.model, self.click_history, self._require_image().shape)

    def _previous_logits(self, obj: SegmentObject, roi: RoiGrid) -> torch.Tensor | None:
        return next((logits for r, logits in obj.state.logits if r.key == roi.key), None)

    @staged(lambda self, obj, state, rois: "segmenting")
    def _update(self, obj: SegmentObject, state: ObjectState, rois: list[RoiGrid]) -> Interaction:
        """Decode ``state``'s prompts in ``rois`` (and grow into neighbouring ROIs where the mask
        reaches a ROI face), push the new state and repaint the label map."""
        self.timings = self.predictor.timings = Timings()
        old_boxes = self._boxes(obj.state)
        if not state.logits:  # a step held as its mask: decode every ROI it was in, or their parts are lost
            rois = rois + [roi for roi in state.rois if roi.key not in {r.key for r in rois}]
        state, logits = self._decode_rois(obj, state, rois)
        coarse = self._zoom_out(state, logits)
        if coarse:
            state, logits = self._decode_rois(obj, replace(state, logits=(), seeds=()), coarse)
        started = time.perf_counter()
        obj.push(replace(state, logits=tuple(logits.values()), rois=()))
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

        def wanted(neighbour: RoiGrid) -> bool:  # asked as the queue grows
            return neighbour.key not in logits and len(logits) + len(queue) < self.max_rois

        while queue:
            roi, mask_input = queue.pop(0)
            logits[roi.key] = (roi, self._decode(state, roi, mask_input))
            if self.progress is not None:
                self.progress(Progress(len(logits), None))
            if not coarsest or len(logits) + len(queue) >= self.max_rois:
                continue
            for neighbour, seed, prompt in growth(roi, logits[roi.key][1], wanted):
                state = replace(state, seeds=state.seeds + ((neighbour.key, seed),))
                queue.append((neighbour, prompt))
        return state, logits

    def _zoom_out(self, state: ObjectState, logits: dict[tuple, tuple[RoiGrid, torch.Tensor]]) -> list[RoiGrid]:
        """The coarse ROIs to move the object to when its mask reaches a face of a finer ROI that lies
        inside the volume, or when include clicks there are each left in a small part of its mask
        (:func:`~.prompts3d.clicks_stranded`): one centred where that ROI was, and one at each click it
        leaves out (up to ``max_rois``); empty when the object stays where it is."""
        coarse = self._spacings()[-1]
        touching = []
        for roi, value in logits.values():
            if self._roi_spacing(roi) >= coarse:
                continue
            positive = (value[0, 0] > 0).cpu().numpy()
            if faces_reached(roi, positive) or clicks_stranded(roi, positive, state.clicks):
                touching.append(roi)
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
            previous = self.predictor.mask_prompt(roi, state.initial_mask)
        logits, _ = self.predictor.predict(roi, *self._prompts(state, roi), box=state.box, mask_input=previous)
        return logits.to(HISTORY_DTYPE)

    def _empty_state(self) -> ObjectState:
        return ObjectState()

    def _compute_regions(self, state: ObjectState) -> list[Region]:
        """The object's mask as (input box, boolean sub-array) pieces (cached by ObjectEngine._regions)."""
        if not state.logits:
            region = None if state.initial_mask is None else state.initial_mask.region()
            return [] if region is None else [region]
        regions = []
        for roi, logits in state.logits:
            box, mask = self._pasted(roi, logits)
            if mask.any():
                regions.append((box, clip_to_box(self.model, state, mask, box)))
        return regions

    def _pasted(self, roi: RoiGrid, logits: torch.Tensor) -> Region:
        """``roi.paste_mask`` of a ROI's logits, kept while a current state holds them: a click decodes
        only the ROIs it lies in, and the object's other ROIs keep their pasted masks (a liver in 4
        ROIs pasted 4 of 5-7 ms each per click)."""
        cached = self._pastes.get(id(logits))
        if cached is None or cached[0] is not logits:
            live = {id(value) for obj in self.objects.values() for _, value in obj.state.logits}
            for key in [key for key in self._pastes if key not in live]:
                del self._pastes[key]
            cached = self._pastes[id(logits)] = (logits, roi.paste_mask(logits[0, 0]))
        return cached[1]
