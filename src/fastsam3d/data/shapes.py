"""Synthetic training crops with domain randomisation (SynthSeg-style), made directly at crop size.

Each sample is a label map of a few smooth random shapes (deformed, rotated ellipsoids, some
touching each other or leaving the crop) turned into an image with random intensities per label
(at least ``min_contrast`` apart, so every structure is visible),
noise, a multiplicative bias field, blur (sometimes anisotropic, as thick slices) and sometimes a
zero-padded side (as when the ROI leaves the volume). No download, no resampling of big volumes.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from scipy.spatial.transform import Rotation


def _smooth_field(rng: np.random.Generator, size: int, control: int = 6) -> np.ndarray:
    """A smooth random field in [-1, 1]: random control points, trilinearly upsampled."""
    coarse = torch.from_numpy(rng.uniform(-1, 1, (1, 1) + (control,) * 3).astype(np.float32))
    return F.interpolate(coarse, size=(size,) * 3, mode="trilinear", align_corners=True)[0, 0].numpy()


def _separated_means(rng: np.random.Generator, count: int, gap: float) -> np.ndarray:
    """``count`` random intensities in [0, 1] at least ``gap`` apart (no invisible structures)."""
    while True:
        means = rng.uniform(0, 1, count)
        if count < 2 or np.diff(np.sort(means)).min() >= gap:
            return means


class SyntheticShapes:
    """Random (image, label map) crops; ``sample_object`` picks one structure as the target."""

    def __init__(self, size: int = 128, seed: int = 0, max_shapes: int = 5, min_contrast: float = 0.1) -> None:
        self.size = size
        self.max_shapes = max_shapes
        self.min_contrast = min_contrast
        self.rng = np.random.default_rng(seed)

    def labels(self) -> np.ndarray:
        """(S, S, S) uint8 label map of 1..max_shapes shapes (later shapes drawn on top)."""
        rng, size = self.rng, self.size
        coarse = size // 2
        axis = (np.arange(coarse, dtype=np.float32) + 0.5) * 2 - 0.5
        grid = np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), -1)
        labels = np.zeros((size,) * 3, np.uint8)
        for label in range(1, rng.integers(1, self.max_shapes + 1) + 1):
            centre = rng.uniform(0.1, 0.9, 3) * size
            radii = np.exp(rng.uniform(np.log(5), np.log(50), 3))
            rotation = Rotation.random(random_state=rng.integers(1 << 31)).as_matrix().astype(np.float32)
            local = (grid - centre) @ rotation / radii
            level = np.sqrt((local**2).sum(-1)) - 1 + rng.uniform(0, 0.5) * _smooth_field(rng, coarse)
            fine = F.interpolate(torch.from_numpy(level)[None, None], size=(size,) * 3, mode="trilinear")[0, 0]
            labels[fine.numpy() < 0] = label
        return labels

    def sample(self) -> tuple[np.ndarray, np.ndarray]:
        """(image float32, label map uint8), both (S, S, S)."""
        rng, size = self.rng, self.size
        labels = self.labels()
        means = _separated_means(rng, labels.max() + 1, self.min_contrast)
        image = means[labels].astype(np.float32)
        image += rng.uniform(0.0, 0.1) * _smooth_field(rng, size, control=10)  # texture
        sigma = rng.uniform(0, 1.5, 3)
        if rng.random() < 0.3:
            sigma[rng.integers(3)] = rng.uniform(1.5, 3.5)  # thick slices along one axis
        image = ndimage.gaussian_filter(image, sigma)
        image *= np.exp(rng.uniform(0, 0.3) * _smooth_field(rng, size, control=4))  # bias field
        image += rng.normal(0, rng.uniform(0.005, 0.08), image.shape).astype(np.float32)
        image = image * rng.uniform(50, 1000) + rng.uniform(-0.6, 0.3) * 1000 * (rng.random() < 0.5)
        if rng.random() < 0.2:  # the ROI left the volume on one side: zero padding
            axis, width = rng.integers(3), rng.integers(8, size // 3)
            index = [slice(None)] * 3
            index[axis] = slice(0, width) if rng.random() < 0.5 else slice(size - width, size)
            image[tuple(index)] = 0
            labels[tuple(index)] = 0
        return image.astype(np.float32), labels

    def sample_object(self, min_voxels: int = 200) -> tuple[np.ndarray, np.ndarray]:
        """(image, boolean target) with a target of at least ``min_voxels`` voxels."""
        while True:
            image, labels = self.sample()
            counts = np.bincount(labels.ravel())
            candidates = [label for label in range(1, len(counts)) if counts[label] >= min_voxels]
            if candidates:
                return image, labels == self.rng.choice(candidates)
