"""Reading volumes: NIfTI through nibabel (memory-mapped or decompressed in chunks), DICOM series,
NRRD and MetaImage through SimpleITK, each checked to be one finite single-channel 3D volume."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..errors import VolumeError
from ..stages import staged
from .files import suffix
from .volume import LPS_TO_RAS, Volume, check_finite, check_layout, memory_map_of, sitk_direction

if TYPE_CHECKING:
    import SimpleITK as sitk


def dicom_series_files(folder: Path) -> list[str]:
    """The files of the largest DICOM series in ``folder`` (none: an empty list)."""
    import SimpleITK as sitk

    reader = sitk.ImageSeriesReader()
    series = reader.GetGDCMSeriesIDs(str(folder)) or []
    return max((list(reader.GetGDCMSeriesFileNames(str(folder), sid)) for sid in series), key=len, default=[])


def _read_dicom_series(folder: Path) -> sitk.Image:
    import SimpleITK as sitk

    files = dicom_series_files(folder)
    if not files:
        raise VolumeError(f"no DICOM series found in {folder}")
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    return reader.Execute()


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
    if suffix(path) == ".nii.gz" and (proxy.slope, proxy.inter) == (1.0, 0.0):
        array = _read_gzip_voxels(path, proxy.offset, proxy.dtype, shape, proxy.order)
    else:  # memory-mapped when uncompressed and unscaled; scaled values as nibabel computes them
        array = np.asarray(proxy).reshape(shape)  # trailing axes of size 1 dropped: a view
        if memory_map_of(array) is not None:
            array.flags.writeable = False  # voxels are never written: read-only pages can be dropped
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
    return spacing, affine[:3, 3] * LPS_TO_RAS, direction * LPS_TO_RAS[:, None]


def _itk_header_geometry(path: Path, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    import SimpleITK as sitk

    header = sitk.ImageFileReader()
    header.SetFileName(str(path))
    header.ReadImageInformation()
    check_layout(header.GetDimension(), header.GetSize(), header.GetNumberOfComponents(), str(path))
    if tuple(header.GetSize()) != shape:
        raise VolumeError(f"{path} has voxel data of shape {shape} but a header saying {header.GetSize()}")
    return np.array(header.GetSpacing()), np.array(header.GetOrigin()), sitk_direction(header)


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
        elif suffix(path) in (".nii", ".nii.gz"):
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
