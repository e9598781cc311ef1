"""What the harness evaluates: anything that turns accumulated prompts into a mask.

:class:`SamSegmenter` drives a 3D SAM through :class:`~fastsam3d.engine.session3d.Session` (cached
embeddings, previous logits fed back); :class:`RandomWalkerSegmenter` is the classical
interactive baseline (scikit-image's random walker, close to 3D Slicer's Grow from Seeds).
Both see exactly the prompts the protocol produces.
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path

import numpy as np

from ..engine.answers import Timings
from ..engine.labelmap import Slices
from ..engine.roi import RoiGrid
from ..engine.session3d import Session
from ..engine.strokes import lasso, scribble
from ..io import Volume
from ..registry import spatial_dims
from .protocols import Prompt, Protocol


class Segmenter:
    """Interface: one image at a time, one structure at a time, prompts accumulate."""

    name = ""

    def set_image(self, volume: Volume) -> None:
        raise NotImplementedError

    def begin(self, protocol: Protocol, roi_centre: np.ndarray | None = None) -> None:
        """Start a new structure (no prompts yet)."""
        raise NotImplementedError

    def region(self) -> Slices | None:
        """The input voxels the segmenter can segment (its ROI), or None for the whole volume."""
        return None

    def apply(self, prompts: list[Prompt]) -> tuple[np.ndarray, Timings]:
        """Add prompts; return the structure's boolean mask on the input grid and the step's time by
        stage (encoder 0 when the embedding was cached; the caller measures the whole step)."""
        raise NotImplementedError


class SamSegmenter(Segmenter):
    """A 3D SAM behind the interactive :class:`Session`, configured as the protocol asks."""

    def __init__(
        self,
        model: str | Path,
        checkpoint: str | Path | None = None,
        device: str | None = None,
        name: str | None = None,
    ):
        self.session = Session(model, device=device, checkpoint=checkpoint)
        self.name = name or str(model)
        self._roi: RoiGrid | None = None
        self._roi_centre: np.ndarray | None = None

    def set_image(self, volume: Volume) -> None:
        self.session.set_image(volume)

    def begin(self, protocol: Protocol, roi_centre: np.ndarray | None = None) -> None:
        self.session.click_history = protocol.click_history
        self.session.max_rois = protocol.max_rois
        self.session.add_object()
        self._roi_centre = roi_centre
        self._roi = None
        if roi_centre is not None:
            self._roi = RoiGrid.centred(
                self.session.volume,
                roi_centre,
                size=self.session.model.img_size,
                spacing=self.session.model.roi_spacing,
            )

    def region(self) -> Slices | None:
        return None if self._roi is None else self._roi.covered_slices()

    def apply(self, prompts: list[Prompt]) -> tuple[np.ndarray, Timings]:
        return apply_prompts(self.session, prompts, roi_centre=self._roi_centre)


class SliceSegmenter(Segmenter):
    """A 2D SAM run slice by slice with propagation (:class:`~fastsam3d.engine.session2d.SliceSession`)."""

    def __init__(self, model: str, checkpoint: str | Path | None = None, device: str | None = None):
        from ..engine.session2d import SliceSession

        self.session = SliceSession(model, checkpoint=checkpoint, device=device)
        self.name = model

    def set_image(self, volume: Volume) -> None:
        self.session.set_image(volume)

    def begin(self, protocol: Protocol, roi_centre: np.ndarray | None = None) -> None:
        self.session.add_object()  # new structure; cached slice embeddings are kept

    def apply(self, prompts: list[Prompt]) -> tuple[np.ndarray, Timings]:
        return apply_prompts(self.session, prompts)


def apply_prompts(session, prompts: list[Prompt], **options) -> tuple[np.ndarray, Timings]:
    """Each prompt through the engine's verb, in order; ``options`` go to box and click verbs (the
    3D engine's ``roi_centre``). Returns the mask and the summed timings."""
    timing = Timings()
    for prompt in prompts:
        if prompt.stroke is not None:
            verb = session.add_lasso if prompt.stroke == "lasso" else session.add_scribble
            answer = verb(np.array(prompt.vertices), prompt.positive)
        elif prompt.box is not None:
            answer = session.set_box(*prompt.box, **options)
        else:
            answer = session.add_click(prompt.point, prompt.positive, **options)
        timing += answer.timings
    return session.mask(), timing


class RandomWalkerSegmenter(Segmenter):
    """Random walker (Grady 2006) from the clicks, on a ROI coarsened to about ``spacing_mm``.

    Coarse voxels are treated as isotropic (scikit-image's ``spacing`` option shrank the object to its
    seeds in our tests). Include clicks seed the object, exclude clicks and the ROI faces that lie inside the volume
    seed the background. The ROI is the box prompt grown by ``box_margin`` voxels, else a cube of
    ``roi_mm`` around the include clicks (the 3D SAMs' field of view). Seeds are balls of one
    coarse voxel; the result is upsampled by repetition onto the input grid.
    """

    name = "random-walker"

    def __init__(self, roi_mm: float = 192.0, spacing_mm: float = 3.0, beta: float = 130.0, box_margin: int = 3):
        self.roi_mm, self.spacing_mm, self.beta, self.box_margin = roi_mm, spacing_mm, beta, box_margin
        self.volume: Volume | None = None
        self.clicks: list[Prompt] = []
        self.box: tuple | None = None

    def set_image(self, volume: Volume) -> None:
        self.volume = volume

    def begin(self, protocol: Protocol, roi_centre: np.ndarray | None = None) -> None:
        self.clicks, self.box = [], None

    def apply(self, prompts: list[Prompt]) -> tuple[np.ndarray, Timings]:
        from skimage.segmentation import random_walker

        started = time.perf_counter()
        for prompt in prompts:
            if prompt.stroke is not None:  # every voxel of the stroke seeds its side
                make = lasso if prompt.stroke == "lasso" else scribble
                voxels = make(np.array(prompt.vertices), prompt.positive, self.volume.shape).voxels
                self.clicks += [
                    Prompt(point=tuple(int(v) for v in voxel), positive=prompt.positive) for voxel in voxels
                ]
            elif prompt.box is not None:
                self.box = prompt.box
            else:
                self.clicks.append(prompt)
        shape = np.array(self.volume.shape)
        roi = self._roi(shape)
        factor = np.maximum(1, np.round(self.spacing_mm / self.volume.spacing)).astype(int)
        data = self.volume.array[roi].astype(np.float32)
        coarse = _block_mean(data, factor)
        low, high = np.percentile(coarse, [0.5, 99.5])
        coarse = np.clip((coarse - low) / max(high - low, 1e-6), 0, 1)
        seeds = np.zeros(coarse.shape, dtype=np.int32)
        for face, inside in _faces(roi, shape):
            if inside:
                seeds[face] = 2
        offset = np.array([s.start for s in roi])
        points = [(p, p.positive) for p in self.clicks]
        if self.box is not None:
            points.append((Prompt(point=tuple((np.array(self.box[0]) + self.box[1]) // 2)), True))
        for prompt, positive in points:
            index = (np.array(prompt.point) - offset) // factor
            if np.all(index >= 0) and np.all(index < seeds.shape):
                ball = tuple(slice(max(int(v) - 1, 0), int(v) + 2) for v in index)
                seeds[ball] = 1 if positive else 2
        mask = np.zeros(self.volume.shape, dtype=bool)
        if (seeds == 1).any():
            if not (seeds == 2).any():  # ROI = whole volume and no exclude click: the faces are background
                for face, _ in _faces(roi, shape):
                    seeds[face] = np.where(seeds[face] == 1, 1, 2)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "probability range outside [0, 1]" at loose tolerance: harmless here
                labels = random_walker(coarse, seeds, beta=self.beta, mode="cg_j", tol=1e-3)
            full = np.ones(3, dtype=int)
            for axis in range(3):
                labels = np.repeat(labels, factor[axis], axis=axis)
                full[axis] = roi[axis].stop - roi[axis].start
            mask[roi] = labels[: full[0], : full[1], : full[2]] == 1
        return mask, Timings(decoder=time.perf_counter() - started)

    def _roi(self, shape: np.ndarray) -> Slices:
        if self.box is not None:
            low = np.maximum(np.array(self.box[0]) - self.box_margin, 0)
            high = np.minimum(np.array(self.box[1]) + self.box_margin + 1, shape)
        else:
            positives = np.array([p.point for p in self.clicks if p.positive] or [p.point for p in self.clicks])
            centre = positives.mean(0)
            half = self.roi_mm / 2 / self.volume.spacing
            low = np.maximum(np.floor(centre - half), 0).astype(int)
            high = np.minimum(np.ceil(centre + half) + 1, shape).astype(int)
        return tuple(slice(int(a), int(b)) for a, b in zip(low, high, strict=True))


def _block_mean(array: np.ndarray, factor: np.ndarray) -> np.ndarray:
    """Mean over ``factor`` blocks (edge blocks padded by replication)."""
    if np.all(factor == 1):
        return array
    padded = np.pad(array, [(0, (-n) % f) for n, f in zip(array.shape, factor, strict=True)], mode="edge")
    shape = [n // f for n, f in zip(padded.shape, factor, strict=True)]
    return padded.reshape(shape[0], factor[0], shape[1], factor[1], shape[2], factor[2]).mean(axis=(1, 3, 5))


def _faces(roi: Slices, shape: np.ndarray):
    """The six faces of the coarse ROI array as index tuples, with whether each lies inside the volume."""
    for axis in range(3):
        for end, inside in ((0, roi[axis].start > 0), (-1, roi[axis].stop < shape[axis])):
            face = [slice(None)] * 3
            face[axis] = end
            yield tuple(face), inside


def build_segmenter(spec: str, device: str | None = None) -> Segmenter:
    """``random-walker``, a model name / checkpoint path, or ``NAME=CHECKPOINT``."""
    if spec == RandomWalkerSegmenter.name:
        return RandomWalkerSegmenter()
    name, _, checkpoint = spec.partition("=")
    if spatial_dims(name) == 2:
        return SliceSegmenter(name, checkpoint or None, device)
    return SamSegmenter(name, checkpoint=checkpoint or None, device=device, name=spec if not checkpoint else name)
