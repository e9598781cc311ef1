"""The Volume type: a 3D array with its geometry (spacing, origin, direction), the LPS / RAS
flip, the label map aligned to an image's grid, and the CT test."""

from __future__ import annotations

import mmap
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ..errors import VolumeError

if TYPE_CHECKING:
    import SimpleITK as sitk

LPS_TO_RAS = np.array([-1.0, -1.0, 1.0])


def lps_to_ras(points: np.ndarray) -> np.ndarray:
    """Flip x and y of (..., 3) world points: LPS <-> RAS (the map is its own inverse)."""
    return np.asarray(points, dtype=np.float64) * LPS_TO_RAS


ras_to_lps = lps_to_ras


@dataclass(frozen=True)
class Volume:
    """A 3D image or label map with its geometry.

    ``array`` is (I, J, K) indexed ``[i, j, k]``; ``spacing`` (mm) is along i, j, k; ``origin`` is
    the LPS position of voxel (0, 0, 0); column c of ``direction`` is the LPS unit vector of axis c.
    """

    array: np.ndarray
    spacing: np.ndarray
    origin: np.ndarray
    direction: np.ndarray

    def __post_init__(self) -> None:
        array = np.asarray(self.array)
        if array.ndim != 3:
            raise VolumeError(f"a volume must be 3D, got an array of shape {array.shape}")
        if min(array.shape) == 0:
            raise VolumeError(f"volume has an empty axis (shape {array.shape})")
        spacing = np.asarray(self.spacing, dtype=np.float64).reshape(-1)
        origin = np.asarray(self.origin, dtype=np.float64).reshape(-1)
        direction = np.asarray(self.direction, dtype=np.float64)
        if spacing.shape != (3,) or not np.all(np.isfinite(spacing)) or np.any(spacing <= 0):
            raise VolumeError(f"voxel spacing must be three positive numbers, got {spacing.tolist()}")
        if origin.shape != (3,) or not np.all(np.isfinite(origin)):
            raise VolumeError(f"origin must be three finite numbers, got {origin.tolist()}")
        if direction.shape != (3, 3) or not np.all(np.isfinite(direction)) or abs(np.linalg.det(direction)) < 1e-6:
            raise VolumeError("direction must be an invertible 3x3 matrix")
        object.__setattr__(self, "array", array)
        object.__setattr__(self, "spacing", spacing)
        object.__setattr__(self, "origin", origin)
        object.__setattr__(self, "direction", direction)

    def __repr__(self) -> str:
        # Geometry only: the dataclass default printed the whole array (1,469 characters for 50×60×70).
        # The axis letters are computed here rather than by ``orientation`` so a repr never loads SimpleITK.
        letters = ""
        for column in self.direction.T:
            axis = int(np.argmax(np.abs(column)))
            letters += ("LR", "PA", "SI")[axis][int(column[axis] < 0)]
        oblique = "" if np.allclose(np.abs(self.direction), np.round(np.abs(self.direction))) else ", oblique"
        spacing = ", ".join(f"{s:.4g}" for s in self.spacing)
        origin = ", ".join(f"{o:.4g}" for o in self.origin)
        return (
            f"Volume(shape={self.shape}, dtype={self.array.dtype}, spacing=({spacing}) mm, "
            f"origin=({origin}) mm LPS, orientation={letters}{oblique})"
        )

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.array.shape)

    @property
    def affine(self) -> np.ndarray:
        """4x4 map from voxel index (i, j, k, 1) to LPS millimetres."""
        affine = np.eye(4)
        affine[:3, :3] = self.direction * self.spacing
        affine[:3, 3] = self.origin
        return affine

    @property
    def orientation(self) -> str:
        """Closest anatomical direction each of the i, j, k axes points toward, e.g. ``LPS`` for an
        identity direction (DICOM-like), ``RAS`` for a typical NIfTI."""
        import SimpleITK as sitk

        return sitk.DICOMOrientImageFilter_GetOrientationFromDirectionCosines(self.direction.flatten().tolist())

    def index_to_world(self, index: np.ndarray) -> np.ndarray:
        """(..., 3) continuous voxel indices -> LPS mm."""
        index = np.asarray(index, dtype=np.float64)
        return index @ (self.direction * self.spacing).T + self.origin

    def world_to_index(self, points: np.ndarray) -> np.ndarray:
        """(..., 3) LPS mm -> continuous voxel indices."""
        points = np.asarray(points, dtype=np.float64)
        return (points - self.origin) @ np.linalg.inv(self.direction * self.spacing).T

    def with_array(self, array: np.ndarray) -> Volume:
        """Same geometry, new voxels (same shape)."""
        if np.shape(array) != self.shape:
            raise VolumeError(f"array of shape {np.shape(array)} does not fit a volume of shape {self.shape}")
        return Volume(array, self.spacing, self.origin, self.direction)

    def to_sitk(self) -> sitk.Image:
        import SimpleITK as sitk

        array = self.array.astype(np.uint8) if self.array.dtype == bool else self.array
        image = sitk.GetImageFromArray(np.ascontiguousarray(array.transpose(2, 1, 0)))
        image.SetSpacing(self.spacing.tolist())
        image.SetOrigin(self.origin.tolist())
        image.SetDirection(self.direction.flatten().tolist())
        return image

    @classmethod
    def from_sitk(cls, image: sitk.Image, name: str = "image") -> Volume:
        """The image's voxels without a copy (the array keeps the image alive) and its geometry."""
        import SimpleITK as sitk

        check_layout(image.GetDimension(), image.GetSize(), image.GetNumberOfComponentsPerPixel(), name)
        array = np.asarray(_ImageBuffer(image, sitk.GetArrayViewFromImage(image))).transpose(2, 1, 0)
        return cls(array, np.array(image.GetSpacing()), np.array(image.GetOrigin()), sitk_direction(image))


class _ImageBuffer:
    """Exposes a SimpleITK image's voxel buffer to numpy and keeps the image alive as the array's base."""

    def __init__(self, image: sitk.Image, view: np.ndarray) -> None:
        self.image = image
        self.__array_interface__ = view.__array_interface__


def sitk_direction(image: sitk.Image | sitk.ImageFileReader) -> np.ndarray:
    return np.array(image.GetDirection()).reshape(3, 3)


def check_layout(dimension: int, size: tuple[int, ...], components: int, name: str) -> None:
    """Refuse anything that is not one single-channel 3D volume."""
    shape = "x".join(map(str, size))
    if dimension == 2 or (dimension == 3 and min(size) < 2):
        raise VolumeError(f"{name} is 2D ({shape}); fastsam3d needs a 3D volume")
    if dimension != 3:
        raise VolumeError(f"{name} is {dimension}D ({shape}); pass a single 3D volume")
    if components != 1:
        raise VolumeError(f"{name} has {components} components per voxel (vector/RGB); pass a single-channel volume")


def drop_mapped_pages(array: np.ndarray) -> None:
    """Unmap the pages of a memory-mapped, read-only array from this process (they stay in the
    system's file cache and come back on the next read): after reading a crop, or a pass over the
    whole volume (its NaN check). An array in the heap, or a writable mapping, is left as it is."""
    mapping = memory_map_of(array)
    if mapping is not None and not array.flags.writeable and hasattr(mmap, "MADV_DONTNEED"):
        mapping.madvise(mmap.MADV_DONTNEED)


def memory_map_of(array: np.ndarray) -> mmap.mmap | None:
    """The memory map under an array (through its views), or None for an array in the heap."""
    while array is not None:
        if isinstance(array, mmap.mmap):
            return array
        found = getattr(array, "_mmap", None)
        if isinstance(found, mmap.mmap):
            return found
        array = getattr(array, "base", None)
    return None


def check_finite(volume: Volume, name: str = "image") -> None:
    """Refuse volumes with NaN or infinite voxels (a model would return garbage)."""
    if np.issubdtype(volume.array.dtype, np.floating) and not np.isfinite(volume.array).all():
        count = int((~np.isfinite(volume.array)).sum())
        raise VolumeError(f"{name} contains {count} NaN/inf voxels")


def align_label(image: Volume, label: Volume, image_name: object = "image", label_name: object = "label") -> Volume:
    """The label map on the image's voxel grid.

    A label map stored on the same voxels in another axis order or direction (a flipped or
    permuted copy of the grid, as converters often write) is reordered exactly; any other
    geometry is an error naming both files.
    """
    index_map = np.linalg.inv(label.affine) @ image.affine  # image index -> label index
    linear = index_map[:3, :3]
    permutation = np.rint(linear)
    offset = index_map[:3, 3]
    exact = np.allclose(linear, permutation, atol=1e-3) and np.allclose(offset, np.rint(offset), atol=1e-2)
    if exact and np.all(np.abs(permutation).sum(0) == 1) and np.all(np.abs(permutation).sum(1) == 1):
        axes = [int(np.flatnonzero(permutation[:, a])[0]) for a in range(3)]  # label axis of image axis a
        signs = [int(permutation[axes[a], a]) for a in range(3)]
        starts = np.rint(offset).astype(int)
        reordered = np.transpose(label.array, axes)
        shape_ok = reordered.shape == image.shape
        if shape_ok:
            flips = tuple(slice(None, None, -1) if s < 0 else slice(None) for s in signs)
            first = [starts[axes[a]] for a in range(3)]
            expected = [0 if s > 0 else n - 1 for s, n in zip(signs, image.shape, strict=True)]
            if first == expected:
                return image.with_array(np.ascontiguousarray(reordered[flips]))
    raise VolumeError(
        f"label map {label_name} (shape {label.shape}, spacing {np.round(label.spacing, 3).tolist()}, "
        f"origin {np.round(label.origin, 2).tolist()}) does not lie on the voxels of image {image_name} "
        f"(shape {image.shape}, spacing {np.round(image.spacing, 3).tolist()}, origin {np.round(image.origin, 2).tolist()})"
    )


def is_ct(array: np.ndarray) -> bool:
    """CT in Hounsfield units: the minimum is below -500 (air is about -1000 HU); MR intensities
    do not go that low."""
    return float(np.min(array)) < -500
