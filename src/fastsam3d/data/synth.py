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
/ bone classes, so the synthetic body has an outline and layers, as real images do.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from scipy.spatial.transform import Rotation

from ..io import Volume, read_volume
from ..preprocess import RoiGrid
from .shapes import SyntheticShapes, _smooth_field

BACKGROUND_HU = (-500.0, -30.0, 150.0)  # split of unlabelled voxels: air | fat | soft tissue | bone
BACKGROUND_FIRST = 250  # label values given to those four background classes
MIN_TARGET_VOXELS = 8  # at the crop's 3 mm: smaller structures are not targets


@dataclass
class LabelMapAtlas:
    """A real label map on its image grid (RAS-ordered arrays), with the background split by HU."""

    labels: np.ndarray  # (X, Y, Z) int16, background classes >= BACKGROUND_FIRST
    image: np.ndarray  # (X, Y, Z) float32, the real intensities
    spacing: np.ndarray  # mm per axis of ``labels``
    targets: np.ndarray  # label values that can be targets (the real structures)

    @classmethod
    def from_files(cls, image_path: str | Path, label_path: str | Path) -> LabelMapAtlas:
        image, labels = read_volume(image_path), read_volume(label_path)
        if image.shape != labels.shape:
            raise ValueError(f"{label_path} is not on the grid of {image_path}")
        return cls.from_volumes(image, labels)

    @classmethod
    def from_volumes(cls, image: Volume, labels: Volume) -> LabelMapAtlas:
        centre = (np.array(image.shape) - 1) / 2
        roi = RoiGrid.centred(image, centre, size=1, spacing=1.0)  # only for the RAS axis order and signs
        order = roi.axes
        flips = [a for a in range(3) if roi.step[a] < 0]
        ras = [np.flip(np.transpose(v.array, order), flips) for v in (image, labels)]
        hu = ras[0].astype(np.float32)
        values = ras[1].astype(np.int16)
        background = BACKGROUND_FIRST + np.digitize(hu, BACKGROUND_HU).astype(np.int16)
        values = np.where(values > 0, values, background)
        targets = np.array([v for v in np.unique(values) if 0 < v < BACKGROUND_FIRST])
        spacing = np.asarray(image.spacing, dtype=np.float64)[list(order)]
        return cls(np.ascontiguousarray(values), np.ascontiguousarray(hu), spacing, targets)


class SynthesisSource:
    """Training crops ``(image (1, S, S, S), target (1, S, S, S))`` from label-map atlases.

    ``real_fraction`` of the crops keep the atlas's real image (deformed the same way),
    ``ct_fraction`` paint CT-like values (the real median per label plus noise), the rest random
    Gaussian mixtures; ``shapes_fraction`` are random-shape crops instead.
    """

    def __init__(
        self,
        atlases: list[LabelMapAtlas],
        size: int = 64,
        spacing: float = 3.0,
        real_fraction: float = 0.2,
        ct_fraction: float = 0.2,
        shapes_fraction: float = 0.1,
    ) -> None:
        self.atlases, self.size, self.spacing = atlases, size, spacing
        self.real_fraction, self.ct_fraction, self.shapes_fraction = real_fraction, ct_fraction, shapes_fraction
        self._medians = [_label_medians(a) for a in atlases]

    def draw(self, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        if rng.random() < self.shapes_fraction:
            image, target = SyntheticShapes(self.size, seed=int(rng.integers(1 << 62))).sample_object(200)
            return torch.from_numpy(image)[None], torch.from_numpy(target)[None].float()
        index = int(rng.integers(len(self.atlases)))
        atlas = self.atlases[index]
        while True:
            labels, image, inside = self._deformed(atlas, rng)
            present = [v for v in np.unique(labels[self._core()]) if 0 < v < BACKGROUND_FIRST]
            if present:
                target = labels == int(rng.choice(present))
                if target.sum() >= MIN_TARGET_VOXELS:
                    break
        mode = rng.random()
        if mode < self.real_fraction:
            painted = image
        elif mode < self.real_fraction + self.ct_fraction:
            painted = _paint(labels, rng, self._medians[index], rng.uniform(5, 40))
        else:
            painted = _paint(labels, rng)
        painted = _corrupt(painted, rng)
        painted = _intensity_range(painted, rng)
        painted[~inside] = 0  # outside the volume: zero, as the ROI extraction pads
        return torch.from_numpy(painted.astype(np.float32))[None], torch.from_numpy(target)[None].float()

    def _core(self) -> tuple[slice, slice, slice]:
        """The central part of the crop, where the first click of a user lies (the ROI is centred on it)."""
        low, high = self.size // 2 - self.size // 8, self.size // 2 + self.size // 8
        return (slice(low, high),) * 3

    def _deformed(self, atlas: LabelMapAtlas, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Labels (nearest), real image (linear) and an inside-the-volume mask on a random crop grid."""
        size = self.size
        structure = int(rng.choice(atlas.targets))
        voxels = np.argwhere(atlas.labels == structure)
        centre = voxels[rng.integers(len(voxels))] + rng.normal(0, 4, 3)
        rotation = Rotation.from_euler("xyz", rng.uniform(-15, 15, 3), degrees=True).as_matrix()
        scale = np.exp(rng.uniform(np.log(0.8), np.log(1.25), 3))
        flips = np.where(rng.random(3) < 0.2, -1.0, 1.0)
        axis = (np.arange(size) - (size - 1) / 2) * self.spacing  # crop offsets in mm
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
        labels = (
            F.grid_sample(
                torch.from_numpy(atlas.labels.astype(np.float32))[None, None],
                normalised,
                mode="nearest",
                padding_mode="zeros",
                align_corners=True,
            )[0, 0]
            .numpy()
            .astype(np.int16)
        )
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
    labels: np.ndarray, rng: np.random.Generator, medians: dict[int, float] | None = None, spread: float = 0.0
) -> np.ndarray:
    """One Gaussian per label: random means in [0, 1] (or the given medians plus ``spread`` noise)."""
    values, inverse = np.unique(labels, return_inverse=True)
    if medians is None:
        means = rng.uniform(0, 1, len(values))
        deviations = rng.uniform(0, 0.06, len(values))
    else:
        means = np.array([medians.get(int(v), 0.0) for v in values]) + rng.normal(0, spread, len(values))
        deviations = rng.uniform(0, 25, len(values))
    inverse = inverse.reshape(labels.shape)
    return (means[inverse] + deviations[inverse] * rng.standard_normal(labels.shape)).astype(np.float32)


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
