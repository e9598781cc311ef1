"""Training crops around structures of labelled volumes, on the grid the engine segments on.

Each draw picks a case, a structure in it and a voxel of that structure, shifts it at random (the
object is not always centred, like SAM-Med3D's label-centred crop with jitter) and resamples only
that ROI: ``RoiGrid.centred`` (128³ at 1.5 mm, axes permuted/flipped to RAS) + ``extract``, then
``normalise_intensity``, as :class:`~fastsam3d.engine.session3d.Session` does at inference. Augmentation:
random flips (as SAM-Med3D's training), a random scale through the ROI spacing (exact and free:
the resampler does it), and MONAI gamma / noise / smoothing on the normalised crop.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable

import numpy as np
from monai.transforms import Compose, RandAdjustContrast, RandGaussianNoise, RandGaussianSmooth
from monai.utils import convert_to_tensor
from scipy import ndimage

from ..configs import TARGET_SPACING_MM
from ..engine.roi import RoiGrid, normalise_intensity
from ..errors import FastSAM3DError
from ..evaluation.datasets import Case, load_cases
from .streams import Sample


class LabelledCrops:
    """A source (``draw(rng)``) of (image, target) crops from a manifest, nnU-Net or FastSAM3D dataset.

    ``include`` / ``exclude`` select cases by name (held-out validation cases); structures smaller
    than ``min_volume_mm3`` are never targets. The last ``cache`` loaded cases stay in memory
    (per loader process; the cache is not pickled, so spawned workers work).
    """

    def __init__(
        self,
        data: str,
        size: int = 128,
        include: Iterable[str] | None = None,
        exclude: Iterable[str] = (),
        classes: list[str] | None = None,
        augment: bool = True,
        min_volume_mm3: float = 3000.0,
        shift_mm: float = 15.0,
        cache: int = 16,
    ) -> None:
        cases = load_cases(data, classes)
        wanted = set(include) if include is not None else None
        self.cases = [c for c in cases if (wanted is None or c.name in wanted) and c.name not in set(exclude)]
        if not self.cases:
            raise FastSAM3DError(
                f"no cases of {data} left after include={sorted(wanted or [])} exclude={sorted(exclude)}"
            )
        self.size, self.augment, self.min_volume, self.shift = size, augment, min_volume_mm3, shift_mm
        self.cache_size, self._cache = cache, OrderedDict()
        self.intensity = Compose(
            [
                RandAdjustContrast(prob=0.3, gamma=(0.7, 1.5)),
                RandGaussianNoise(prob=0.3, std=0.1),
                RandGaussianSmooth(prob=0.2, sigma_x=(0.25, 1.0), sigma_y=(0.25, 1.0), sigma_z=(0.25, 1.0)),
            ]
        )

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_cache": OrderedDict()}

    def _load(self, index: int):
        if index in self._cache:
            self._cache.move_to_end(index)
        else:
            self._cache[index] = self._load_case(index)
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return self._cache[index]

    def _load_case(self, index: int):
        case: Case = self.cases[index]
        image, label = case.load()
        labels = label.array.astype(np.int32, copy=False)
        counts = np.bincount(labels.ravel(), minlength=max(case.classes, default=0) + 1)
        voxel_volume = float(np.prod(image.spacing))
        present = [c for c in case.classes if c < len(counts) and counts[c] * voxel_volume >= self.min_volume]
        boxes = ndimage.find_objects(labels)
        return image, labels, present, boxes

    def draw(self, rng: np.random.Generator) -> Sample:
        for _ in range(20):
            image, labels, present, boxes = self._load(int(rng.integers(len(self.cases))))
            if not present:
                continue
            structure = present[rng.integers(len(present))]
            target_voxel = self._voxel_of(labels, boxes[structure - 1], structure, rng)
            spacing = TARGET_SPACING_MM * (rng.uniform(0.85, 1.15) if self.augment else 1.0)
            shift = rng.normal(0, self.shift, 3) / image.spacing if self.augment else np.zeros(3)
            roi = RoiGrid.centred(image, target_voxel + shift, self.size, spacing)
            target = roi.extract((labels == structure).view(np.uint8)) > 0.5
            if target.sum() < 20:  # the shift moved it out
                continue
            crop = normalise_intensity(roi.extract(image.array))
            if self.augment:
                for axis in range(3):
                    if rng.random() < 0.5:
                        crop, target = crop.flip(axis), target.flip(axis)
                self.intensity.set_random_state(int(rng.integers(1 << 31)))
                crop = convert_to_tensor(self.intensity(crop[None]), track_meta=False)[0].float()  # no MetaTensor
            return crop[None].contiguous(), target[None].float().contiguous()
        raise FastSAM3DError(
            f"no structure of at least {self.min_volume:.0f} mm³ found in {[c.name for c in self.cases]}"
        )

    @staticmethod
    def _voxel_of(labels: np.ndarray, box: tuple[slice, ...], structure: int, rng: np.random.Generator) -> np.ndarray:
        """A random voxel of the structure (rejection sampling in its bounding box)."""
        block = labels[box]
        for _ in range(100):
            index = np.array([rng.integers(s.stop - s.start) for s in box])
            if block[tuple(index)] == structure:
                return index + [s.start for s in box]
        inside = np.argwhere(block == structure)
        return inside[rng.integers(len(inside))] + [s.start for s in box]
