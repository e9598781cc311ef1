"""Simulated interaction protocols: the prompts a user would give at each step.

Every protocol is deterministic given its ``numpy.random.Generator``. Step ``n`` (1-based) sees
the current prediction and the truth on the input grid and returns the prompts to add. All
prompts of a structure accumulate in one object of the segmenter.

``fastsam3d``
    The official FastSAM3D / SAM-Med3D validation (REFERENCE.md §5): the ROI is centred on the
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
``box+5``
    The CVPR 2025 interactive 3D challenge: step 1 is the structure's bounding box, steps 2-6
    are ``center`` clicks.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from ..clicks import center_click

RANDOM_BACKGROUND_MARGIN_MM = 10.0


@dataclass(frozen=True)
class Prompt:
    """A click (``point`` voxel index, ``positive``) or a box (``box`` = inclusive low/high corners)."""

    point: tuple[int, int, int] | None = None
    positive: bool = True
    box: tuple[tuple[int, int, int], tuple[int, int, int]] | None = None


class Protocol:
    """Base: how the segmenter is configured and which prompts each step adds."""

    name = ""
    click_history = "all"  # "last": the segmenter feeds only the newest click (with previous logits)
    max_rois = 4
    label_centred_roi = False
    default_steps = 5

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
    name = "box+5"
    default_steps = 6

    def prompts(self, step, prediction, target, spacing, rng, region=None):
        if step == 1:
            where = np.argwhere(target)
            return [Prompt(box=(tuple(int(v) for v in where.min(0)), tuple(int(v) for v in where.max(0))))]
        return CenterProtocol().prompts(step, prediction, target, spacing, rng, region)


def _grown_box(mask: np.ndarray, spacing, margin_mm: float) -> tuple[slice, slice, slice]:
    where = np.argwhere(mask)
    grow = np.ceil(margin_mm / np.asarray(spacing, dtype=float)).astype(int)
    low = np.maximum(where.min(0) - grow, 0)
    high = np.minimum(where.max(0) + grow + 1, mask.shape)
    return tuple(slice(int(a), int(b)) for a, b in zip(low, high, strict=True))


PROTOCOLS: dict[str, type[Protocol]] = {
    p.name: p for p in (FastSAM3DProtocol, CenterProtocol, RandomProtocol, BoxThenClicksProtocol)
}


def get_protocol(name: str) -> Protocol:
    """A protocol by name (see module docstring)."""
    if name not in PROTOCOLS:
        raise ValueError(f"unknown protocol {name!r}; choose from {', '.join(PROTOCOLS)}")
    return PROTOCOLS[name]()
