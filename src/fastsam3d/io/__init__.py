"""Volumes in and out, with their geometry (SimpleITK does the file formats; nibabel reads NIfTI).

Conventions, used everywhere in fastsam3d:

* ``Volume.array[i, j, k]`` with (i, j, k) the ITK index (= nibabel's ``data[i, j, k]``);
  SimpleITK's own numpy view is (k, j, i) and is transposed on the way in and out.
* World coordinates are millimetres in LPS, as ITK, DICOM and 3D Slicer use;
  :func:`ras_to_lps` / :func:`lps_to_ras` convert points given in RAS (nibabel, FreeSurfer).

SimpleITK is imported on first use (its library alone is ~90 MB of resident memory): reading an
uncompressed or gzipped NIfTI whose header is unambiguous never loads it, and an uncompressed
``.nii`` is memory-mapped, so a session touches only the voxels of its ROIs.

Modules: ``volume`` (the Volume type), ``readers`` (read_volume, DICOM series), ``files`` (write_volume,
atomic_output, output folders).
"""

from .files import WRITE_SUFFIXES, atomic_output, check_folder, check_writable, file_mode, make_folder, write_volume
from .readers import dicom_series_files, holds_dicom, read_volume
from .volume import Volume, align_label, check_finite, drop_mapped_pages, is_ct, lps_to_ras, memory_map_of, ras_to_lps

__all__ = [
    "WRITE_SUFFIXES",
    "Volume",
    "align_label",
    "atomic_output",
    "check_finite",
    "check_folder",
    "check_writable",
    "dicom_series_files",
    "drop_mapped_pages",
    "file_mode",
    "holds_dicom",
    "is_ct",
    "lps_to_ras",
    "make_folder",
    "memory_map_of",
    "ras_to_lps",
    "read_volume",
    "write_volume",
]
