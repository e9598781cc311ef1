"""napari reader contribution: NIfTI, NRRD, MHA/MHD files and DICOM folders, with their geometry.

The image layer gets the volume's full affine (spacing, direction, origin; see :mod:`.layers`),
a radiological axial view, and the CT soft-tissue window when the volume is a CT.
"""

from __future__ import annotations

from pathlib import Path

from ..io import holds_dicom, read_volume
from .layers import image_layer_data

SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd")


def get_reader(path):
    """The reader for ``path`` (a file or a DICOM folder), or None when the plugin cannot read it."""
    if isinstance(path, (list, tuple)):
        if len(path) != 1:
            return None
        path = path[0]
    path = Path(path)
    if path.is_dir():
        return read_layers if holds_dicom(path) else None
    return read_layers if path.name.lower().endswith(SUFFIXES) else None


def read_layers(path) -> list[tuple]:
    """[(data, kwargs, "image")] for one volume."""
    path = Path(path[0] if isinstance(path, (list, tuple)) else path)
    volume = read_volume(path)
    name = path.name.rstrip("/") or "volume"
    data, kwargs = image_layer_data(volume, name)
    return [(data, kwargs, "image")]
