"""Simulated interaction protocols: the prompts a user would give at each step.

Every protocol is deterministic given its ``numpy.random.Generator``. Step ``n`` (1-based) sees
the current prediction and the truth on the input grid and returns the prompts to add. All
prompts of a structure accumulate in one object of the segmenter.

``fastsam3d``
    The official FastSAM3D / SAM-Med3D validation (docs/reference.md §8): the ROI is centred on the
    label's bounding box (an oracle crop), only the newest click is fed with the previous
    low-res logits, one ROI only. Steps 1-2 use the RITM-style sampler (the error type whose
    distance map has the larger maximum wins, ties go to false positives; a voxel drawn
    uniformly from where the distance exceeds half that maximum), later steps draw a voxel
    uniformly from all errors. Distances are in voxels, as in the official code; clicks are
    drawn on the input grid inside the ROI (the official code draws on its 1.5 mm crop).
``center``
    Each click at the interior-most voxel (maximum of the distance transform, in mm) of the
    largest error, include for a false negative, exclude for a false positive (RITM /
    nnInteractive convention).
``random``
    The Fast 3D SAM random-click test: step k holds k include clicks drawn uniformly from the
    structure and k exclude clicks drawn uniformly from the background within the structure's
    bounding box grown by 10 mm (each step adds one of each).
``lasso`` / ``scribble``
    Step 1 is one stroke: a lasso tracing the outline of the structure's largest 2D part on the
    slice (across the axis closest to superior-inferior) where it has most voxels, or a scribble
    along its medial axis (:mod:`fastsam3d.simulated_strokes`); later steps are ``center`` clicks.
``box+5`` (alias ``cvpr25``)
    The CVPR 2025 challenge "Foundation Models for Interactive 3D Biomedical Image
    Segmentation", as its evaluation script ``CVPR25_iter_eval.py`` and box script
    ``get_boxes.py`` (github.com/JunMa11/CVPR-MedSegFMCompetition) do it; see
    ``docs/evaluation.md``. Step 1 is the challenge's box: the slices ``z_min..z_max`` the
    structure spans across the slice axis (the input axis closest to superior-inferior), and on
    its middle slice (the median of the slices it occupies) the in-plane bounding box grown by
    ``int(s * n / 256)`` voxels per axis of ``n`` voxels, ``s`` drawn from 0-5. Structures
    whose name matches :data:`NO_BOX_PATTERNS` (vessels) get no box: step 1 is skipped with
    Dice = NSD = 0, as the challenge omits the box for such targets. Steps 2-6 each add one
    click per structure: the largest 26-connected component of the error (prediction != truth),
    at its voxel farthest from the component's border (Euclidean distance in voxels, ties
    drawn with ``RandomState(42)`` in the challenge's (D, H, W) array order), an include click
    when the truth is there, else an exclude click; no click when the prediction is perfect.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from ..clicks import center_click
from ..simulated_strokes import medial_scribble, traced_lasso

RANDOM_BACKGROUND_MARGIN_MM = 10.0

NO_BOX_PATTERNS: tuple[str, ...] = (
    r"\baort",  # aorta, aortic arch
    r"\barter",  # artery, arteries, arterial
    r"\bveins?\b",
    r"\bvenae?\b",  # vena cava, iliac_vena (TotalSegmentator)
    r"\bvenous\b",
    r"\bvessel",
    r"\bvascul",  # vascular, vasculature
    r"\bcarotid",
    r"\bjugular",
    r"\bsubclavian",
    r"\bbrachiocephalic",
    r"\biliac\b",  # iliac artery / vein, not iliacus
    r"\bportal\b",  # portal vein (and splenic vein)
    r"\bcoronar",
    r"\b(celiac|coeliac|pulmonary) trunk",
    r"\bcircle of willis",
)
"""Regular expressions (searched in the lower-cased structure name with ``_`` and ``-`` read as
spaces) of the vessel-like structures that get no box in the challenge protocol. The challenge
omits the box "as it is a bad prompt for some structures, such as vessels" (its README) but
publishes no list: these patterns are this project's reading of it."""

_CHALLENGE_EDT_MAX_VOXELS = 60_000_000  # larger padded crops: distance transform at half resolution


def is_vessel_like(structure: str, patterns: tuple[str, ...] | list[str] | None = None) -> bool:
    """Whether ``structure`` matches one of ``patterns`` (default :data:`NO_BOX_PATTERNS`)."""
    name = re.sub(r"[_\-]+", " ", str(structure).lower())
    return any(re.search(p, name) for p in (NO_BOX_PATTERNS if patterns is None else patterns))


@dataclass(frozen=True)
class Prompt:
    """A click (``point`` voxel index, ``positive``), a box (``box`` = inclusive low/high corners;
    ``box_slice`` = (axis, index) of the slice its in-plane extent was measured on, when known) or
    a stroke (``stroke`` = ``"scribble"`` or ``"lasso"`` through the voxel indices ``vertices``)."""

    point: tuple[int, int, int] | None = None
    positive: bool = True
    box: tuple[tuple[int, int, int], tuple[int, int, int]] | None = None
    box_slice: tuple[int, int] | None = None
    stroke: str | None = None
    vertices: tuple[tuple[float, float, float], ...] = ()


class Protocol:
    """Base: how the segmenter is configured and which prompts each step adds."""

    name = ""
    click_history = "all"  # "last": the segmenter feeds only the newest click (with previous logits)
    max_rois = 4
    label_centred_roi = False
    default_steps = 5
    challenge = False  # report the CVPR 2025 challenge metrics (DSC/NSD AUC, finals, times)

    def start(self, structure: str, slice_axis: int = 2, no_box: tuple[str, ...] | list[str] | None = None) -> None:
        """A new structure begins: its name, the input axis slices are cut across (closest to
        superior-inferior) and the name patterns that get no box. Default: nothing to prepare."""

    def prompts(
        self,
        step: int,
        prediction: np.ndarray,
        target: np.ndarray,
        spacing,
        rng: np.random.Generator,
        region: tuple[slice, slice, slice] | None = None,
    ) -> list[Prompt]:
        """Prompts for ``step`` (1-based); empty when nothing is left to correct. ``region`` limits
        clicks to the voxels the segmenter can see (its ROI), when it has one."""
        raise NotImplementedError


class CenterProtocol(Protocol):
    name = "center"

    def prompts(self, step, prediction, target, spacing, rng, region=None):
        found = center_click(prediction, target, spacing)
        if found is None:
            return []
        point, positive = found
        return [Prompt(point=tuple(int(v) for v in point), positive=positive)]


class FastSAM3DProtocol(Protocol):
    name = "fastsam3d"
    click_history = "last"
    max_rois = 1
    label_centred_roi = True

    def prompts(self, step, prediction, target, spacing, rng, region=None):
        box = region or (slice(None),) * 3
        missed = target[box] & ~prediction[box]
        extra = prediction[box] & ~target[box]
        if step <= 2:
            candidates, positive = _ritm_candidates(missed, extra)
        else:
            candidates = missed | extra
            positive = None
        where = np.argwhere(candidates)
        if len(where) == 0:
            return []
        point = where[rng.integers(len(where))]
        positive = bool(missed[tuple(point)]) if positive is None else positive
        offset = np.array([s.start or 0 for s in box])
        return [Prompt(point=tuple(int(v) for v in point + offset), positive=positive)]


def _ritm_candidates(missed: np.ndarray, extra: np.ndarray) -> tuple[np.ndarray, bool]:
    """The official RITM-style sampler's candidate voxels (unit voxel distances, zero border)."""
    distances = [ndimage.distance_transform_edt(np.pad(m, 1))[1:-1, 1:-1, 1:-1] for m in (missed, extra)]
    maxima = [float(d.max()) for d in distances]
    positive = maxima[0] > maxima[1]
    chosen, top = (distances[0], maxima[0]) if positive else (distances[1], maxima[1])
    return chosen > top / 2, positive


class RandomProtocol(Protocol):
    name = "random"

    def prompts(self, step, prediction, target, spacing, rng, region=None):
        inside = np.argwhere(target)
        box = _grown_box(target, spacing, RANDOM_BACKGROUND_MARGIN_MM)
        outside = np.argwhere(~target[box]) + np.array([s.start for s in box])
        prompts = [Prompt(point=tuple(int(v) for v in inside[rng.integers(len(inside))]), positive=True)]
        if len(outside):
            prompts.append(Prompt(point=tuple(int(v) for v in outside[rng.integers(len(outside))]), positive=False))
        return prompts


class BoxThenClicksProtocol(Protocol):
    """The CVPR 2025 interactive challenge (module docstring): box (or none), then challenge clicks."""

    name = "box+5"
    default_steps = 6
    challenge = True

    def __init__(self) -> None:
        self.use_box = True
        self.slice_axis = 2

    def start(self, structure, slice_axis=2, no_box=None):
        self.use_box = not is_vessel_like(structure, no_box)
        self.slice_axis = int(slice_axis)

    def prompts(self, step, prediction, target, spacing, rng, region=None):
        if step == 1:
            return [challenge_box(target, self.slice_axis, rng)] if self.use_box else []
        found = challenge_click(prediction, target, self.slice_axis)
        if found is None:
            return []
        point, positive = found
        return [Prompt(point=point, positive=positive)]


class StrokeThenClicksProtocol(Protocol):
    """``lasso`` / ``scribble``: step 1 is a stroke on the structure (:mod:`fastsam3d.simulated_strokes`),
    later steps ``center`` clicks."""

    default_steps = 5

    def __init__(self) -> None:
        self.slice_axis = 2

    def start(self, structure, slice_axis=2, no_box=None):
        self.slice_axis = int(slice_axis)

    def prompts(self, step, prediction, target, spacing, rng, region=None):
        if step > 1:
            return CenterProtocol.prompts(self, step, prediction, target, spacing, rng, region)
        if self.name == "lasso":
            vertices = traced_lasso(target, self.slice_axis)
        else:
            vertices = medial_scribble(target, spacing)
        if vertices is None:
            return []
        return [Prompt(stroke=self.name, vertices=tuple(tuple(float(v) for v in p) for p in vertices))]


class LassoProtocol(StrokeThenClicksProtocol):
    name = "lasso"


class ScribbleProtocol(StrokeThenClicksProtocol):
    name = "scribble"


def challenge_box(target: np.ndarray, slice_axis: int, rng: np.random.Generator) -> Prompt:
    """The challenge's box (``get_boxes.py``: ``mask3D_to_bbox``): slices ``z_min..z_max`` across
    ``slice_axis``; in plane, the bounding box on the middle slice (the median of the occupied
    slices), grown by ``int(shift * n / 256)`` voxels on an axis of ``n`` voxels, one ``shift``
    drawn from 0-5 for both axes, clipped to the volume."""
    others = [a for a in range(3) if a != slice_axis]
    slices = np.flatnonzero(target.any(axis=tuple(others)))
    middle = int(slices[len(slices) // 2])
    plane = np.take(target, middle, axis=slice_axis)  # axes: ``others`` in increasing order
    shift = int(rng.integers(0, 6))
    low, high = [0, 0, 0], [0, 0, 0]
    low[slice_axis], high[slice_axis] = int(slices[0]), int(slices[-1])
    for plane_axis, axis in enumerate(others):
        occupied = np.flatnonzero(plane.any(axis=1 - plane_axis))
        grow = int(shift * target.shape[axis] / 256)
        low[axis] = max(0, int(occupied[0]) - grow)
        high[axis] = min(target.shape[axis] - 1, int(occupied[-1]) + grow)
    return Prompt(box=(tuple(low), tuple(high)), box_slice=(int(slice_axis), middle))


def challenge_axes(slice_axis: int) -> tuple[int, int, int]:
    """The input axes in the order of the challenge's (D, H, W) arrays: the slice axis, then the
    other two in decreasing order (a SimpleITK array of an axially acquired file is (k, j, i))."""
    return (int(slice_axis), *sorted((a for a in range(3) if a != slice_axis), reverse=True))


def challenge_click(prediction: np.ndarray, target: np.ndarray, slice_axis: int = 2):
    """The challenge's click (``CVPR25_iter_eval.py``): in the largest 26-connected component of
    ``prediction != target``, the voxel farthest from the component's border (Euclidean distance
    in voxels), ties drawn with ``RandomState(42)`` in (D, H, W) order; include when ``target`` is
    set there. Returns (voxel index, positive) or None when the prediction is perfect."""
    axes = challenge_axes(slice_axis)
    error = np.transpose(np.asarray(prediction, bool) != np.asarray(target, bool), axes)
    if not error.any():
        return None
    box = ndimage.find_objects(error.astype(np.uint8))[0]
    components, _ = ndimage.label(error[box], structure=np.ones((3, 3, 3), dtype=bool))
    sizes = np.bincount(components.ravel())
    sizes[0] = 0
    largest = components == int(np.argmax(sizes))  # the lowest label (raster order) wins ties, as cc3d
    inner = ndimage.find_objects(largest.astype(np.uint8))[0]
    component = largest[inner]
    depth = _component_distance(component) * component
    if not depth.any():  # only with the half-resolution transform of a huge, thin error
        depth = component.astype(np.float64)
    ties = np.argwhere(depth == depth.max())
    chosen = ties[np.random.RandomState(42).choice(len(ties))]
    offset = np.array([b.start + i.start for b, i in zip(box, inner, strict=True)])
    point = np.empty(3, dtype=int)
    point[list(axes)] = chosen + offset
    point = tuple(int(v) for v in point)
    return point, bool(target[point])


def _component_distance(component: np.ndarray) -> np.ndarray:
    """``compute_edt`` of the challenge: the distance transform of the component's box padded by a
    quarter of its size (at least one voxel); padded boxes over 60 M voxels at half resolution
    (2x2x2 maximum, then repeated back)."""
    size = np.array(component.shape)
    pad = np.maximum((size * 0.25).astype(int), 1)
    padded = np.pad(component, [(int(p), int(p)) for p in pad])
    if padded.size > _CHALLENGE_EDT_MAX_VOXELS:
        even = np.pad(padded, [(0, n % 2) for n in padded.shape])
        half = even.reshape(even.shape[0] // 2, 2, even.shape[1] // 2, 2, even.shape[2] // 2, 2).max(axis=(1, 3, 5))
        distance = ndimage.distance_transform_edt(half)
        distance = distance.repeat(2, axis=0).repeat(2, axis=1).repeat(2, axis=2)
    else:
        distance = ndimage.distance_transform_edt(padded)
    return distance[tuple(slice(int(p), int(p + n)) for p, n in zip(pad, size, strict=True))]


def _grown_box(mask: np.ndarray, spacing, margin_mm: float) -> tuple[slice, slice, slice]:
    where = np.argwhere(mask)
    grow = np.ceil(margin_mm / np.asarray(spacing, dtype=float)).astype(int)
    low = np.maximum(where.min(0) - grow, 0)
    high = np.minimum(where.max(0) + grow + 1, mask.shape)
    return tuple(slice(int(a), int(b)) for a, b in zip(low, high, strict=True))


PROTOCOLS: dict[str, type[Protocol]] = {
    p.name: p
    for p in (FastSAM3DProtocol, CenterProtocol, RandomProtocol, BoxThenClicksProtocol, LassoProtocol, ScribbleProtocol)
}
PROTOCOLS["cvpr25"] = BoxThenClicksProtocol  # the same protocol under a clearer name


def get_protocol(name: str) -> Protocol:
    """A protocol by name (see module docstring)."""
    if name not in PROTOCOLS:
        raise ValueError(f"unknown protocol {name!r}; choose from {', '.join(PROTOCOLS)}")
    return PROTOCOLS[name]()
