"""The 3D engine's object states and what they give the model in each ROI: the point prompts of
clicks, strokes, a box centre and growth seeds (:func:`point_prompts`), and the neighbouring ROIs a
mask that reaches a ROI face grows into (:func:`growth`)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy import ndimage

from .labelmap import PackedMask, Slices, bounding_box
from .roi import RoiGrid
from .strokes import LASSO_BAND, Stroke, interior_points, sampled

MIN_FACE_VOXELS = 4  # low-res foreground voxels on a ROI face for the object to grow across it
STRANDED_PART_VOXELS = 200  # low-res voxels (0.7 ml at 1.5 mm) of a click's part that found nothing around it
SPARSE_STROKE_POINTS = 5  # points a stroke becomes for models trained with a few clicks (3D SAMs)


@dataclass(frozen=True)
class Click:
    """A point prompt at a continuous input voxel index (i, j, k)."""

    index: tuple[float, float, float]
    positive: bool = True


@dataclass(frozen=True)
class ObjectState:
    """One step of an object's history: its prompts and the resulting low-res logits per ROI.

    A step far back in the history may be held as its mask instead (``initial_mask``, with the
    ``rois`` its logits were in: :meth:`~.persistence.StepEncoder.hold_steps`); a prompt on it then decodes
    those ROIs again with the mask as mask prompt."""

    clicks: tuple[Click, ...] = ()
    box: tuple[tuple[int, int, int], tuple[int, int, int]] | None = None  # inclusive voxel corners
    initial_mask: PackedMask | None = field(
        default=None, compare=False, repr=False
    )  # a mask given (or restored) as a prompt
    logits: tuple[tuple[RoiGrid, torch.Tensor], ...] = field(default=(), compare=False, repr=False)
    rois: tuple[RoiGrid, ...] = field(default=(), compare=False, repr=False)  # of a step held as its mask (no logits)
    seeds: tuple[tuple[tuple, Click], ...] = ()  # (ROI key, positive click) placed when an object grew into a new ROI
    strokes: tuple[Stroke, ...] = ()  # scribbles and lassos, each ordered among the clicks by its after_clicks


def point_prompts(
    state: ObjectState, roi: RoiGrid, model, click_history: str, shape: tuple[int, int, int]
) -> tuple[np.ndarray, list[int]]:
    """The state's point prompts inside one ROI: (N, 3) input voxel indices and their labels,
    clicks and strokes in the order they were given (a later prompt wins where they meet).

    Clicks follow ``click_history`` (``"all"``, or ``"last"``: the newest click or stroke only); a box on a
    model without box embeddings adds a positive click at its centre; seeds placed when the
    object grew into this ROI are positive clicks.
    """
    clicks = [(n, c) for n, c in enumerate(state.clicks) if roi.contains(np.array(c.index))[0]]
    strokes = list(state.strokes)
    if click_history == "last":
        newest_is_stroke = bool(strokes) and strokes[-1].after_clicks == len(state.clicks)
        clicks, strokes = ([], strokes[-1:]) if newest_is_stroke else (clicks[-1:], [])
    prompts = [((n, 1), np.array([c.index]), [int(c.positive)]) for n, c in clicks]
    prompts += [((s.after_clicks, 0), *stroke_prompts(s, roi, model, shape)) for s in strokes]
    prompts.sort(key=lambda prompt: prompt[0])
    points = [p for _, group, _ in prompts for p in group]
    labels = [label for _, _, group in prompts for label in group]
    if state.box is not None and not model.supports_boxes:
        points.append(tuple((np.array(state.box[0]) + np.array(state.box[1])) / 2.0))
        labels.append(1)
    for key, seed in state.seeds:
        if key == roi.key:
            points.append(seed.index)
            labels.append(1)
    return np.array(points, dtype=np.float64).reshape(-1, 3), labels


def stroke_prompts(stroke: Stroke, roi: RoiGrid, model, shape: tuple[int, int, int]) -> tuple[np.ndarray, list[int]]:
    """A stroke as point prompts in one ROI (docs/prompts.md). Models trained with prompt maps
    (``dense_prompts``) get one point per ROI voxel the stroke covers, and for an include lasso
    exclude points on a band just outside its outline on its slice (given first, so the area
    wins where they meet); 3D SAMs get a few points: spread along a scribble, deep inside a lasso."""
    if getattr(model, "dense_prompts", False):
        area = one_per_cell(roi, stroke.voxels)
        if stroke.kind == "lasso" and stroke.positive:
            step = float(np.min(np.abs(roi.step)))
            band = one_per_cell(roi, stroke.outline_band(shape, LASSO_BAND[0] * step, LASSO_BAND[1] * step))
            return np.concatenate([band, area]), [0] * len(band) + [1] * len(area)
        return area, [int(stroke.positive)] * len(area)
    if stroke.kind == "lasso":
        points = interior_points(stroke, shape, SPARSE_STROKE_POINTS)
    else:
        points = sampled(stroke.voxels.astype(np.float64), SPARSE_STROKE_POINTS)
    points = points[roi.contains(points)]
    return points, [int(stroke.positive)] * len(points)


def growth(
    roi: RoiGrid, logits: torch.Tensor, wanted: Callable[[RoiGrid], bool] = lambda neighbour: True
) -> Iterator[tuple[RoiGrid, Click, torch.Tensor]]:
    """Neighbouring ROIs for a mask that reaches a ROI face lying inside the volume, those that
    ``wanted`` accepts (asked in turn, as the caller takes them: a neighbour's seed costs a distance
    transform).

    Each neighbour is shifted by half a ROI across that face; it is prompted with the current
    logits moved onto its grid (unknown half: logit 0) and a positive seed click at the
    interior-most foreground voxel of the overlap.
    """
    positive = (logits[0, 0] > 0).cpu().numpy()
    low_res = positive.shape[0]
    half = low_res // 2
    for axis, direction in faces_reached(roi, positive):
        neighbour = roi.neighbour(axis, direction)
        if not wanted(neighbour):
            continue
        ahead, behind = slice(half, None), slice(0, half)
        if direction < 0:
            ahead, behind = behind, ahead
        overlap = np.zeros_like(positive)
        keep = [slice(None)] * 3
        keep[axis] = ahead
        overlap[tuple(keep)] = positive[tuple(keep)]
        seed_low_res = _interior_most(overlap)
        seed = roi.low_res_grid(low_res).roi_to_index(seed_low_res)[0]
        prompt = torch.zeros_like(logits)
        moved, source = [slice(None)] * 5, [slice(None)] * 5
        moved[axis + 2], source[axis + 2] = behind, ahead
        prompt[tuple(moved)] = logits[tuple(source)]
        yield neighbour, Click(tuple(float(v) for v in seed)), prompt


def _interior_most(mask: np.ndarray) -> np.ndarray:
    """The (first, in C order) voxel of a non-empty mask farthest from its background and from the
    array's faces, as floats: the distance transform runs on the mask's bounding box padded by one
    voxel of background, which gives the same distances (every voxel outside the box is background)
    at a fraction of a 64³ transform's ~20 ms."""
    box = bounding_box(mask)
    depth = ndimage.distance_transform_edt(np.pad(mask[box], 1))[1:-1, 1:-1, 1:-1]
    inside = np.unravel_index(np.argmax(depth), depth.shape)
    return np.array([b.start + i for b, i in zip(box, inside, strict=True)], dtype=np.float64)


def faces_reached(roi: RoiGrid, positive: np.ndarray) -> list[tuple[int, int]]:
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


def clicks_stranded(roi: RoiGrid, positive: np.ndarray, clicks: list[Click]) -> bool:
    """Whether two or more include clicks inside ``roi`` each sit in a separate small part of its
    low-res mask ``positive`` (at most ``STRANDED_PART_VOXELS``), and the mask is no more than such
    parts: the ROI shows the model nothing around the clicks to join them by, as when it lies
    wholly inside an organ larger than itself."""
    included = np.array([c.index for c in clicks if c.positive]).reshape(-1, 3)
    included = included[roi.contains(included)]
    # the whole mask no larger than the clicks' small parts: nothing else found (and labelling runs
    # only on such a mask, within its bounding box: 2 ms over 64³)
    if len(included) < 2 or np.count_nonzero(positive) > STRANDED_PART_VOXELS * len(included):
        return False
    box = bounding_box(positive)
    if box is None:
        return False
    parts, _ = ndimage.label(positive[box])
    low_res = positive.shape[0]
    cells = np.clip(np.round(roi.low_res_grid(low_res).index_to_roi(included)).astype(int), 0, low_res - 1)
    low, high = np.array([s.start for s in box]), np.array([s.stop for s in box])
    cells = cells[np.all((cells >= low) & (cells < high), axis=1)] - low
    found = {int(parts[tuple(cell)]) for cell in cells} - {0}
    sizes = np.bincount(parts.ravel())
    return len(found) >= 2 and all(sizes[part] <= STRANDED_PART_VOXELS for part in found)


def one_per_cell(roi: RoiGrid, voxels: np.ndarray) -> np.ndarray:
    """The input voxels (M, 3) inside the ROI, one per ROI cell they fall in (first seen), as floats."""
    inside = voxels[roi.contains(voxels)].astype(np.float64)
    _, first = np.unique(np.floor(roi.index_to_roi(inside)), axis=0, return_index=True)
    return inside[np.sort(first)]


def clip_to_box(model, state: ObjectState, values: np.ndarray, box: Slices | None = None) -> np.ndarray:
    """Zero everything outside the object's box prompt (for models without box embeddings)."""
    if state.box is None or model.supports_boxes:
        return values
    offset = [0, 0, 0] if box is None else [s.start for s in box]
    keep = tuple(
        slice(max(low - o, 0), max(high + 1 - o, 0))
        for low, high, o in zip(state.box[0], state.box[1], offset, strict=True)
    )
    clipped = np.zeros_like(values)
    clipped[keep] = values[keep]
    return clipped


def state_rois(state: ObjectState) -> list[RoiGrid]:
    """The ROIs of a state: those of its logits, or those a step held as its mask was decoded in."""
    return [roi for roi, _ in state.logits] or list(state.rois)
