"""SynthSeg-style training crops from real label maps (Billot et al., Medical Image Analysis 2023).

A real label map (every structure a TotalSegmentator model labelled in a CT) is deformed (random
rotation, scale, flips and a smooth elastic field), sampled on a crop grid, and painted: one
Gaussian intensity distribution per label (random means, CT-like means, or the real image),
then blur, slice thickness, a bias field, noise and gamma, and finally any intensity range
(Hounsfield-like, uint8 [0, 255], float [0, 1]). Every labelled structure can be the target,
with neighbours of any contrast, so a model learns shapes and boundaries, not one scanner's grey
values.

Label 0 of a TotalSegmentator map is everything unlabelled (air, fat, muscle, bone marrow...);
:class:`LabelMapAtlas` splits it by the real CT's Hounsfield units into air / fat / soft tissue
/ bone classes, so the synthetic body has an outline and layers, as real images do. A label map
without an image (a brain parcellation, :mod:`fastsam3d.data.brains`) is painted from random
intensities only, sometimes grouped by tissue (every cortical parcel alike, as in a real T1).

Crops are drawn at several ROI spacings (the engine's fine and coarse zoom), and some carry a
procedural structure (:mod:`fastsam3d.data.procedural`: a vessel tree, a lesion with or without
a rim, a thin sheet) laid over the real anatomy as the target.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from scipy.spatial.transform import Rotation

from ..engine.roi import RoiGrid
from ..io import Volume, read_volume
from .procedural import lesion, thin_sheet, vessel_tree
from .shapes import SyntheticShapes, _smooth_field

BACKGROUND_HU = (-500.0, -30.0, 150.0)  # split of unlabelled voxels: air | fat | soft tissue | bone
BACKGROUND_FIRST = 250  # label values given to those four background classes
MIN_TARGET_VOXELS = 8  # at the crop's spacing: smaller structures are not targets
OVERLAY, RIM = 240, 241  # label values of a procedural structure (and a lesion's rim) laid over the anatomy
OVERLAY_KINDS = {"vessel": 0.45, "lesion": 0.4, "sheet": 0.15}  # how often each procedural structure is drawn


@dataclass
class LabelMapAtlas:
    """A real label map (RAS-ordered arrays), its image if there is one, and which labels are targets.

    ``tissues`` maps labels to tissue classes (labels of one class are sometimes painted alike);
    ``target_weights`` says how often each target is chosen as the crop's structure.
    """

    labels: np.ndarray = field(repr=False)  # (X, Y, Z) int16, background classes >= BACKGROUND_FIRST
    image: np.ndarray | None = field(repr=False)  # (X, Y, Z) float32, the real intensities
    spacing: np.ndarray  # mm per axis of ``labels``
    targets: np.ndarray  # label values that can be targets (the real structures)
    target_weights: np.ndarray | None = None  # one per target (None: uniform)
    tissues: dict[int, int] | None = None
    _cache: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    @classmethod
    def from_files(cls, image_path: str | Path, label_path: str | Path) -> LabelMapAtlas:
        image, labels = read_volume(image_path), read_volume(label_path)
        if image.shape != labels.shape:
            raise ValueError(f"{label_path} is not on the grid of {image_path}")
        return cls.from_volumes(image, labels)

    @classmethod
    def from_volumes(cls, image: Volume, labels: Volume) -> LabelMapAtlas:
        """A CT and its label map: unlabelled voxels become air / fat / soft tissue / bone classes."""
        (hu, values), spacing = _ras_arrays(image, image.array.astype(np.float32), labels.array.astype(np.int16))
        background = BACKGROUND_FIRST + np.digitize(hu, BACKGROUND_HU).astype(np.int16)
        values = np.where(values > 0, values, background)
        targets = np.array([v for v in np.unique(values) if 0 < v < BACKGROUND_FIRST])
        return cls(np.ascontiguousarray(values), np.ascontiguousarray(hu), spacing, targets)

    @classmethod
    def from_label_map(
        cls, labels: Volume, target_weights: dict[int, float], tissues: dict[int, int] | None = None
    ) -> LabelMapAtlas:
        """A label map without an image (0 = air); ``target_weights``: label -> how often it is the target."""
        (values,), spacing = _ras_arrays(labels, labels.array.astype(np.int16))
        values = np.where(values > 0, values, BACKGROUND_FIRST).astype(np.int16)
        present = set(np.unique(values).tolist())
        targets = np.array(sorted(v for v in target_weights if v in present))
        weights = np.array([target_weights[v] for v in targets], dtype=np.float64)
        return cls(np.ascontiguousarray(values), None, spacing, targets, weights / weights.sum(), tissues)

    def draw_target(self, rng: np.random.Generator) -> int:
        """A target label, by ``target_weights``."""
        return int(self.targets[rng.choice(len(self.targets), p=self.target_weights)])

    def label_tensor(self) -> torch.Tensor:
        """(1, 1, X, Y, Z) float32 labels for ``grid_sample`` (made once: a brain map is 7 M voxels)."""
        if "tensor" not in self._cache:
            self._cache["tensor"] = torch.from_numpy(self.labels.astype(np.float32))[None, None]
        return self._cache["tensor"]

    def voxels_of(self, label: int) -> np.ndarray:
        """(N, 3) indices of ``label`` (cached: big label maps are searched once per label)."""
        if label not in self._cache:
            self._cache[label] = np.argwhere(self.labels == label).astype(np.int32)
        return self._cache[label]


def _ras_arrays(reference: Volume, *arrays: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
    """``arrays`` on ``reference``'s grid -> (the arrays in RAS order, spacing per RAS axis)."""
    centre = (np.array(reference.shape) - 1) / 2
    roi = RoiGrid.centred(reference, centre, size=1, spacing=1.0)  # only for the RAS axis order and signs
    order = roi.axes
    flips = [a for a in range(3) if roi.step[a] < 0]
    ras = [np.flip(np.transpose(array, order), flips) for array in arrays]
    spacing = np.asarray(reference.spacing, dtype=np.float64)[list(order)]
    return ras, spacing


class SynthesisSource:
    """Training crops ``(image (1, S, S, S), target (1, S, S, S))`` from label-map atlases.

    Per crop: an atlas (by ``atlas_weights``), a ROI spacing from ``spacings`` (mm), a target
    structure (by the atlas's target weights) to centre on; ``overlay_fraction`` of the crops get a
    procedural structure over the anatomy as the target instead. Painting: ``real_fraction`` keep
    the atlas's real image (deformed the same way), ``ct_fraction`` paint CT-like values (the real
    median per label plus noise), ``tissue_fraction`` of image-less atlases paint each tissue class
    alike, the rest random Gaussian mixtures; ``shapes_fraction`` are random-shape crops instead.
    """

    def __init__(
        self,
        atlases: list[LabelMapAtlas],
        size: int = 64,
        spacings: tuple[float, ...] = (3.0,),
        real_fraction: float = 0.2,
        ct_fraction: float = 0.2,
        tissue_fraction: float = 0.4,
        shapes_fraction: float = 0.1,
        overlay_fraction: float = 0.0,
        atlas_weights: tuple[float, ...] | None = None,
    ) -> None:
        self.atlases, self.size, self.spacings = atlases, size, spacings
        self.real_fraction, self.ct_fraction, self.tissue_fraction = real_fraction, ct_fraction, tissue_fraction
        self.shapes_fraction, self.overlay_fraction = shapes_fraction, overlay_fraction
        weights = np.ones(len(atlases)) if atlas_weights is None else np.asarray(atlas_weights, dtype=np.float64)
        self.atlas_probabilities = weights / weights.sum()
        self._medians = [_label_medians(a) if a.image is not None else None for a in atlases]

    def draw(self, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        if rng.random() < self.shapes_fraction:
            image, target = SyntheticShapes(self.size, seed=int(rng.integers(1 << 62))).sample_object(200)
            return torch.from_numpy(image)[None], torch.from_numpy(target)[None].float()
        index = int(rng.choice(len(self.atlases), p=self.atlas_probabilities))
        atlas = self.atlases[index]
        spacing = float(rng.choice(self.spacings))
        overlay = rng.random() < self.overlay_fraction
        while True:
            structure = atlas.draw_target(rng)
            labels, image, inside = self._deformed(atlas, rng, structure, spacing)
            if overlay:
                target = self._overlay(labels, rng, spacing)
                break
            present = [v for v in np.unique(labels[self._core()]) if 0 < v < BACKGROUND_FIRST]
            if present:
                chosen = structure if structure in present else int(rng.choice(present))
                target = labels == chosen
                if target.sum() >= MIN_TARGET_VOXELS:
                    break
        painted = self._paint(index, labels, image, rng)
        painted = _corrupt(painted, rng)
        painted = _intensity_range(painted, rng)
        painted[~inside] = 0  # outside the volume: zero, as the ROI extraction pads
        return torch.from_numpy(painted.astype(np.float32))[None], torch.from_numpy(target)[None].float()

    def _paint(self, index: int, labels: np.ndarray, image: np.ndarray | None, rng: np.random.Generator) -> np.ndarray:
        """The crop's intensities by one of the painting modes (see the class docstring)."""
        atlas, mode = self.atlases[index], rng.random()
        if atlas.image is None:
            if atlas.tissues is not None and mode < self.tissue_fraction:
                return _paint(labels, rng, groups=atlas.tissues)
            return _paint(labels, rng)
        if mode < self.real_fraction:
            return _paint_overlay(image, labels, rng)
        if mode < self.real_fraction + self.ct_fraction:
            laid = {OVERLAY: rng.uniform(-100, 400), RIM: rng.uniform(-100, 400)}  # a procedural structure's HU
            return _paint(labels, rng, self._medians[index] | laid, rng.uniform(5, 40))
        return _paint(labels, rng)

    def _overlay(self, labels: np.ndarray, rng: np.random.Generator, spacing: float) -> np.ndarray:
        """Lay a procedural structure over ``labels`` (in place); returns it as the target mask."""
        kind = rng.choice(list(OVERLAY_KINDS), p=list(OVERLAY_KINDS.values()))
        rim = None
        if kind == "vessel":
            mask = vessel_tree(self.size, spacing, rng)
        elif kind == "lesion":
            mask, rim = lesion(self.size, spacing, rng)
        else:
            mask = thin_sheet(self.size, spacing, rng)
        labels[mask] = OVERLAY
        if rim is not None:
            labels[rim] = RIM
        return mask

    def _core(self) -> tuple[slice, slice, slice]:
        """The central part of the crop, where the first click of a user lies (the ROI is centred on it)."""
        low, high = self.size // 2 - self.size // 8, self.size // 2 + self.size // 8
        return (slice(low, high),) * 3

    def _deformed(
        self, atlas: LabelMapAtlas, rng: np.random.Generator, structure: int, spacing: float = 3.0
    ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
        """Labels (nearest), real image (linear; None without one) and an inside-the-volume mask on a
        random crop grid of ``spacing`` mm around a voxel of ``structure``."""
        size = self.size
        voxels = atlas.voxels_of(structure)
        centre = voxels[rng.integers(len(voxels))] + rng.normal(0, 4, 3)
        rotation = Rotation.from_euler("xyz", rng.uniform(-15, 15, 3), degrees=True).as_matrix()
        scale = np.exp(rng.uniform(np.log(0.8), np.log(1.25), 3))
        flips = np.where(rng.random(3) < 0.2, -1.0, 1.0)
        axis = (np.arange(size) - (size - 1) / 2) * spacing  # crop offsets in mm
        grid = np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3)
        grid = (grid * flips * scale) @ rotation.T
        coarse = rng.normal(0, rng.uniform(0, 4.0), (3, 5, 5, 5)).astype(np.float32)  # elastic field, mm
        field = F.interpolate(torch.from_numpy(coarse)[None], size=(size,) * 3, mode="trilinear", align_corners=True)[0]
        grid = grid + field.reshape(3, -1).T.numpy()
        source = grid / atlas.spacing + centre  # continuous atlas voxel indices
        shape = np.array(atlas.labels.shape)
        normalised = (
            torch.from_numpy((source / (shape - 1) * 2 - 1)[:, ::-1].copy()).float().view(1, size, size, size, 3)
        )
        sampled = F.grid_sample(atlas.label_tensor(), normalised, mode="nearest", align_corners=True)
        labels = sampled[0, 0].numpy().astype(np.int16)  # zeros outside the atlas
        image = None
        if atlas.image is not None:
            image = F.grid_sample(
                torch.from_numpy(atlas.image)[None, None],
                normalised,
                mode="bilinear",
                padding_mode="border",
                align_corners=True,
            )[0, 0].numpy()
        inside = np.all((source >= -0.5) & (source <= shape - 0.5), axis=1).reshape((size,) * 3)
        return labels, image, inside


def _label_medians(atlas: LabelMapAtlas) -> dict[int, float]:
    """Median real intensity of each label (the CT-like palette)."""
    flat_labels, flat_image = atlas.labels.ravel(), atlas.image.ravel()
    order = np.argsort(flat_labels, kind="stable")
    values, starts = np.unique(flat_labels[order], return_index=True)
    groups = np.split(flat_image[order], starts[1:])
    return {int(v): float(np.median(g)) for v, g in zip(values, groups, strict=True)}


def _paint(
    labels: np.ndarray,
    rng: np.random.Generator,
    medians: dict[int, float] | None = None,
    spread: float = 0.0,
    groups: dict[int, int] | None = None,
) -> np.ndarray:
    """One Gaussian per label: random means in [0, 1] (or the given medians plus ``spread`` noise;
    or one random mean per group of ``groups``, label -> group, plus a small jitter per label)."""
    values, inverse = np.unique(labels, return_inverse=True)
    if medians is not None:
        means = np.array([medians.get(int(v), 0.0) for v in values]) + rng.normal(0, spread, len(values))
        deviations = rng.uniform(0, 25, len(values))
    elif groups is not None:
        group_of = np.array([groups.get(int(v), -1 - int(v)) for v in values])  # ungrouped: a group of its own
        kinds, group_index = np.unique(group_of, return_inverse=True)
        means = rng.uniform(0, 1, len(kinds))[group_index] + rng.normal(0, 0.02, len(values))
        deviations = rng.uniform(0, 0.04, len(values))
    else:
        means = rng.uniform(0, 1, len(values))
        deviations = rng.uniform(0, 0.06, len(values))
    inverse = inverse.reshape(labels.shape)
    return (means[inverse] + deviations[inverse] * rng.standard_normal(labels.shape)).astype(np.float32)


def _paint_overlay(image: np.ndarray, labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The real image, with any procedural structure painted into it (a random level of the crop's range)."""
    if not (labels >= OVERLAY).any():
        return image
    image = image.copy()
    low, high = np.percentile(image, [1, 99])
    for value in (OVERLAY, RIM):
        region = labels == value
        if region.any():
            noise = rng.uniform(0, 0.05) * max(high - low, 1e-6)
            image[region] = rng.uniform(low, high) + noise * rng.standard_normal(int(region.sum()))
    return image


def _corrupt(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Blur (sometimes thick slices), bias field, noise and gamma, on a [0, 1]-rescaled copy."""
    low, high = np.percentile(image, [0.5, 99.5])
    image = np.clip((image - low) / max(high - low, 1e-6), 0, 1).astype(np.float32)
    sigma = rng.uniform(0, 1.0, 3)
    if rng.random() < 0.3:
        sigma[rng.integers(3)] = rng.uniform(1.0, 2.5)  # thick slices along one axis
    image = ndimage.gaussian_filter(image, sigma)
    image *= np.exp(rng.uniform(0, 0.4) * _smooth_field(rng, image.shape[0], control=4))
    image += rng.normal(0, rng.uniform(0.0, 0.06), image.shape).astype(np.float32)
    image = np.clip(image, 0, None) ** np.exp(rng.uniform(-0.4, 0.4))
    return image.astype(np.float32)


def _intensity_range(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The same picture in a random range: Hounsfield-like (with negatives), uint8, or float [0, 1]."""
    choice = rng.random()
    if choice < 0.4:
        return image * rng.uniform(500, 3000) - rng.uniform(0, 1100)
    if choice < 0.7:
        return np.round(np.clip(image / max(float(image.max()), 1e-6), 0, 1) * 255)
    return image
