"""Volumes in and out, with their geometry (SimpleITK does the file formats; nibabel reads NIfTI).

Conventions, used everywhere in fastsam3d:

* ``Volume.array[i, j, k]`` with (i, j, k) the ITK index (= nibabel's ``data[i, j, k]``);
  SimpleITK's own numpy view is (k, j, i) and is transposed on the way in and out.
* World coordinates are millimetres in LPS, as ITK, DICOM and 3D Slicer use;
  :func:`ras_to_lps` / :func:`lps_to_ras` convert points given in RAS (nibabel, FreeSurfer).

SimpleITK is imported on first use (its library alone is ~90 MB of resident memory): reading an
uncompressed or gzipped NIfTI whose header is unambiguous never loads it, and an uncompressed
``.nii`` is memory-mapped, so a session touches only the voxels of its ROIs.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .errors import VolumeError
from .stages import staged

if TYPE_CHECKING:
    import SimpleITK as sitk

WRITE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd")
_LPS_TO_RAS = np.array([-1.0, -1.0, 1.0])


def lps_to_ras(points: np.ndarray) -> np.ndarray:
    """Flip x and y of (..., 3) world points: LPS <-> RAS (the map is its own inverse)."""
    return np.asarray(points, dtype=np.float64) * _LPS_TO_RAS


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

        _check_layout(image.GetDimension(), image.GetSize(), image.GetNumberOfComponentsPerPixel(), name)
        array = np.asarray(_ImageBuffer(image, sitk.GetArrayViewFromImage(image))).transpose(2, 1, 0)
        return cls(array, np.array(image.GetSpacing()), np.array(image.GetOrigin()), _direction(image))


class _ImageBuffer:
    """Exposes a SimpleITK image's voxel buffer to numpy and keeps the image alive as the array's base."""

    def __init__(self, image: sitk.Image, view: np.ndarray) -> None:
        self.image = image
        self.__array_interface__ = view.__array_interface__


def _direction(image: sitk.Image | sitk.ImageFileReader) -> np.ndarray:
    return np.array(image.GetDirection()).reshape(3, 3)


def _check_layout(dimension: int, size: tuple[int, ...], components: int, name: str) -> None:
    """Refuse anything that is not one single-channel 3D volume."""
    shape = "x".join(map(str, size))
    if dimension == 2 or (dimension == 3 and min(size) < 2):
        raise VolumeError(f"{name} is 2D ({shape}); fastsam3d needs a 3D volume")
    if dimension != 3:
        raise VolumeError(f"{name} is {dimension}D ({shape}); pass a single 3D volume")
    if components != 1:
        raise VolumeError(f"{name} has {components} components per voxel (vector/RGB); pass a single-channel volume")


def _read_dicom_series(folder: Path) -> sitk.Image:
    import SimpleITK as sitk

    reader = sitk.ImageSeriesReader()
    series = reader.GetGDCMSeriesIDs(str(folder)) or []
    files = [reader.GetGDCMSeriesFileNames(str(folder), sid) for sid in series]
    if not files:
        raise VolumeError(f"no DICOM series found in {folder}")
    reader.SetFileNames(max(files, key=len))
    return reader.Execute()


def check_finite(volume: Volume, name: str = "image") -> None:
    """Refuse volumes with NaN or infinite voxels (a model would return garbage)."""
    if np.issubdtype(volume.array.dtype, np.floating) and not np.isfinite(volume.array).all():
        count = int((~np.isfinite(volume.array)).sum())
        raise VolumeError(f"{name} contains {count} NaN/inf voxels")


def _read_nifti(path: Path) -> Volume:
    """NIfTI: voxels from nibabel (memory-mapped when uncompressed and unscaled), geometry in LPS
    as ITK reads it: from the header's one transform when qform and sform agree (or only one is
    set), else from ITK's own header reader, whose rules for conflicting transforms we keep.

    ITK's NIfTI reader silently accepts truncated gzip files and turns NaN into 0; nibabel fails
    on the first and keeps the second, and the data is decompressed only once.
    """
    import nibabel

    image = nibabel.load(str(path))
    shape = tuple(int(n) for n in image.shape)
    if len(shape) > 3 and all(size == 1 for size in shape[3:]):  # (x, y, z, 1): one 3D volume
        shape = shape[:3]
    geometry = _nifti_geometry(image.header) if len(shape) == 3 and min(shape) > 1 else None
    if geometry is None:
        geometry = _itk_header_geometry(path, shape)
    proxy = image.dataobj
    if _suffix(path) == ".nii.gz" and (proxy.slope, proxy.inter) == (1.0, 0.0):
        array = _read_gzip_voxels(path, proxy.offset, proxy.dtype, shape, proxy.order)
    else:  # memory-mapped when uncompressed and unscaled; scaled values as nibabel computes them
        array = np.asarray(proxy).reshape(shape)  # trailing axes of size 1 dropped: a view
    return Volume(array, *geometry)


GZIP_CHUNK_BYTES = 2**24  # decompressed at a time into the voxel array


def _read_gzip_voxels(path: Path, offset: int, dtype: np.dtype, shape: tuple[int, ...], order: str) -> np.ndarray:
    """Decompress a .nii.gz's voxels straight into their array, a chunk at a time (reading them
    whole, as gzip and nibabel do, holds a second full copy for a moment)."""
    import gzip

    array = np.empty(shape, dtype=dtype, order=order)
    buffer = memoryview(array.reshape(-1, order="A")).cast("B")
    with gzip.open(path, "rb") as source:
        source.seek(offset)
        for start in range(0, len(buffer), GZIP_CHUNK_BYTES):
            chunk = buffer[start : start + GZIP_CHUNK_BYTES]
            if source.readinto(chunk) != len(chunk):
                raise VolumeError(f"{path} is truncated: it holds fewer voxels than its header says")
    return array


NIFTI_TOLERANCE = 1e-4  # mm / cosine: qform and sform closer than this are the same transform


def _nifti_geometry(header) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(spacing, origin, direction) in LPS from a NIfTI header with one unambiguous, orthogonal
    transform whose column lengths are the header's voxel sizes; None otherwise (ITK decides)."""
    qform, qcode = header.get_qform(coded=True)
    sform, scode = header.get_sform(coded=True)
    if qcode and scode and not np.allclose(qform, sform, atol=NIFTI_TOLERANCE):
        return None
    affine = qform if qcode else sform if scode else None
    if affine is None:
        return None
    linear = affine[:3, :3]
    spacing = np.linalg.norm(linear, axis=0)
    if not np.allclose(spacing, np.abs(header.get_zooms()[:3]), atol=NIFTI_TOLERANCE):
        return None
    direction = linear / spacing
    if not np.allclose(direction.T @ direction, np.eye(3), atol=NIFTI_TOLERANCE):
        return None
    return spacing, affine[:3, 3] * _LPS_TO_RAS, direction * _LPS_TO_RAS[:, None]


def _itk_header_geometry(path: Path, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    import SimpleITK as sitk

    header = sitk.ImageFileReader()
    header.SetFileName(str(path))
    header.ReadImageInformation()
    _check_layout(header.GetDimension(), header.GetSize(), header.GetNumberOfComponents(), str(path))
    if tuple(header.GetSize()) != shape:
        raise VolumeError(f"{path} has voxel data of shape {shape} but a header saying {header.GetSize()}")
    return np.array(header.GetSpacing()), np.array(header.GetOrigin()), _direction(header)


@staged(lambda path: f"reading {Path(path).name}")
def read_volume(path: str | Path) -> Volume:
    """Read NIfTI, NRRD, MetaImage, or a DICOM series (a folder, or one of its files)."""
    path = Path(path)
    if not path.exists():
        raise VolumeError(f"no such file: {path}")
    try:
        if path.is_dir():
            volume = Volume.from_sitk(_read_dicom_series(path), str(path))
        elif path.suffix.lower() == ".dcm":
            volume = Volume.from_sitk(_read_dicom_series(path.parent), str(path))
        elif _suffix(path) in (".nii", ".nii.gz"):
            volume = _read_nifti(path)
        else:
            import SimpleITK as sitk

            volume = Volume.from_sitk(sitk.ReadImage(str(path)), str(path))
    except VolumeError:
        raise
    except Exception:  # noqa: BLE001 - ITK and nibabel raise many types for a broken file
        raise VolumeError(
            f"cannot read {path}: file is corrupt, truncated or not a supported image (NIfTI, NRRD, MHA, DICOM)"
        ) from None
    check_finite(volume, str(path))
    return volume


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


def _suffix(path: Path) -> str:
    name = path.name.lower()
    return next((s for s in WRITE_SUFFIXES if name.endswith(s)), "")


def check_writable(path: str | Path) -> Path:
    """Fail early, before any work, on an output path that cannot be written."""
    path = Path(path)
    if not _suffix(path):
        raise VolumeError(f"cannot write {path}: use one of {', '.join(WRITE_SUFFIXES)}")
    if path.is_dir():
        raise VolumeError(f"cannot write {path}: it is a directory")
    check_folder(path.parent)
    return path


def check_folder(folder: str | Path) -> Path:
    """An output folder that exists or can be created: refuses one under a regular file, in one line."""
    folder = Path(folder)
    for parent in (folder, *folder.parents):
        if parent.exists():
            if not parent.is_dir():
                raise VolumeError(f"cannot write into {folder}: {parent} is a file, not a folder; choose another path")
            break
    return folder


def file_mode() -> int:
    """The mode a new file gets from the umask (0o644 under umask 022), read without changing the umask
    (``os.umask`` is process-wide and racy in a threaded server)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def make_folder(folder: str | Path) -> Path:
    """Create an output folder (and its parents); one clear line when that is impossible."""
    folder = check_folder(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise VolumeError(f"cannot create the folder {folder}: {error.strerror}") from None
    return folder


@contextmanager
def atomic_output(path: str | Path) -> Iterator[Path]:
    """A fresh temporary path beside ``path`` with the same ending (not created: the writer creates it);
    renamed onto ``path`` on success, with the umask's permissions (0644 under 022) whatever mode the
    writer used; removed on failure, leaving any previous ``path`` as it was."""
    path = Path(path)
    make_folder(path.parent)
    temp = path.with_name(f".tmp-{secrets.token_hex(6)}-{path.name}")
    try:
        yield temp
        if temp.is_file():
            os.chmod(temp, file_mode())
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


@staged(lambda volume, path, *args, **kwargs: f"writing {Path(path).name}")
def write_volume(volume: Volume, path: str | Path, compress: bool = True) -> Path:
    """Write atomically (:func:`atomic_output`); the ending chooses the format."""
    import SimpleITK as sitk

    path = check_writable(path)
    try:
        with atomic_output(path) as temp:
            sitk.WriteImage(volume.to_sitk(), str(temp), useCompression=compress)
    except (RuntimeError, OSError) as error:
        raise VolumeError(f"cannot write {path}: {str(error).strip().splitlines()[-1]}") from None
    return path


def holds_dicom(folder: Path) -> bool:
    """Whether a folder's first files are DICOM (the ``DICM`` marker after the 128-byte preamble)."""
    try:
        files = [p for p in sorted(folder.iterdir())[:20] if p.is_file()][:3]
    except OSError:
        return False
    for file in files:
        try:
            with open(file, "rb") as handle:
                if handle.read(132)[128:] == b"DICM":
                    return True
        except OSError:
            continue
    return False
