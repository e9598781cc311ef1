"""Label-map regions, NIfTI files and IJK / RAS geometry for the Slicer client (numpy and SimpleITK only).

Slicer holds arrays in (k, j, i) order; the server's regions are boxes in (i, j, k) with i fastest.
"""

from __future__ import annotations

import base64
import os
import tempfile
import zlib

import numpy as np

_LPS = np.diag([-1.0, -1.0, 1.0])


def segment_region(answer: dict, labels_kji: np.ndarray, label: int):
    """The part of an answer a Segment Editor effect applies to the selected segment: the changed
    box as an inclusive IJK extent ``(i0, i1, j0, j1, k0, k1)`` (what ``modifySelectedSegmentByLabelmap``
    takes) and the object's binary mask inside it, (K, J, I) uint8; None when nothing changed."""
    region = answer.get("region")
    if not region:
        return None
    box = (
        slice(region["start"][2], region["stop"][2]),
        slice(region["start"][1], region["stop"][1]),
        slice(region["start"][0], region["stop"][0]),
    )
    extent = tuple(v for a in range(3) for v in (region["start"][a], region["stop"][a] - 1))
    return extent, (labels_kji[box] == label).astype(np.uint8)


def apply_segment_region(
    segment_kji: np.ndarray,
    extent,
    mask_kji: np.ndarray,
    editable_kji: np.ndarray | None = None,
    others_kji: np.ndarray | None = None,
    overwrite_others: bool = True,
) -> None:
    """What the Segment Editor does with ``modifySelectedSegmentByLabelmap(modifier, Set, extent)``,
    in numpy (the effect calls Slicer's; this is its model for tests): inside ``extent`` only, the
    segment becomes the mask where editing is allowed (``editable``: the masking settings' editable
    area), and, with overwrite, voxels it takes are removed from the other segments."""
    i0, i1, j0, j1, k0, k1 = extent
    box = (slice(k0, k1 + 1), slice(j0, j1 + 1), slice(i0, i1 + 1))
    allowed = np.ones(mask_kji.shape, bool) if editable_kji is None else editable_kji[box].astype(bool)
    if others_kji is not None and not overwrite_others:
        allowed &= ~others_kji[box].astype(bool)
    current = segment_kji[box]
    current[allowed] = mask_kji[allowed]
    if others_kji is not None and overwrite_others:
        others_kji[box][allowed & (mask_kji > 0)] = 0


def flat_box_corners(ijk_to_ras, ras_a, ras_b, dims: int = 3, shape_ijk=None, depth_mm: float | None = None):
    """See :meth:`FastSAM3DLogic.flat_box`. Corners on different slices are returned unchanged."""
    matrix = np.asarray(ijk_to_ras, dtype=np.float64)
    a, b = ras_to_ijk(matrix, ras_a), ras_to_ijk(matrix, ras_b)
    low, high = np.minimum(a, b), np.maximum(a, b)
    flat = [axis for axis in range(3) if round(high[axis]) == round(low[axis])]
    if len(flat) != 1 or dims == 2:
        return np.asarray(ras_a, float), np.asarray(ras_b, float)
    axis = flat[0]
    spacing = np.linalg.norm(matrix[:3, :3], axis=0)
    sides = [(high[o] - low[o]) * spacing[o] for o in range(3) if o != axis]
    half = max((depth_mm or sum(sides) / 2) / 2 / spacing[axis], 1.0)
    centre = round(low[axis])
    low[axis], high[axis] = centre - half, centre + half
    if shape_ijk is not None:
        low[axis], high[axis] = max(low[axis], 0), min(high[axis], shape_ijk[axis] - 1)

    def to_ras(ijk):
        return (matrix @ np.append(ijk, 1.0))[:3]

    return to_ras(low), to_ras(high)


def decode_region(region: dict) -> tuple[tuple[slice, slice, slice], np.ndarray]:
    """A server ``region`` (i fastest, box in i, j, k) as a (K, J, I) box and its values."""
    start, stop = region["start"], region["stop"]
    shape_ijk = tuple(b - a for a, b in zip(start, stop, strict=True))
    raw = zlib.decompress(base64.b64decode(region["data"]))
    values = np.frombuffer(raw, dtype=region["dtype"]).reshape(shape_ijk, order="F").transpose(2, 1, 0)
    return (slice(start[2], stop[2]), slice(start[1], stop[1]), slice(start[0], stop[0])), values


def write_nifti(array_kji: np.ndarray, ijk_to_ras: np.ndarray, path: str) -> None:
    """Write a (K, J, I) array with its IJK-to-RAS matrix as NIfTI (via SimpleITK, which Slicer bundles)."""
    import SimpleITK as sitk

    matrix = np.asarray(ijk_to_ras, dtype=np.float64)
    linear = _LPS @ matrix[:3, :3]  # IJK -> LPS
    spacing = np.linalg.norm(linear, axis=0)
    image = sitk.GetImageFromArray(np.ascontiguousarray(array_kji))
    image.SetSpacing(spacing.tolist())
    image.SetDirection((linear / spacing).flatten().tolist())
    image.SetOrigin((_LPS @ matrix[:3, 3]).tolist())
    sitk.WriteImage(image, path, useCompression=True)


def read_nifti(data: bytes) -> np.ndarray:
    """A NIfTI file's bytes (e.g. the server's label map) as its (K, J, I) array (via SimpleITK)."""
    import SimpleITK as sitk

    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "labels.nii.gz")
        with open(path, "wb") as handle:
            handle.write(data)
        return sitk.GetArrayFromImage(sitk.ReadImage(path))


def ras_to_ijk(ijk_to_ras: np.ndarray, ras) -> np.ndarray:
    """World RAS millimetres -> continuous (i, j, k)."""
    return (
        np.linalg.inv(np.asarray(ijk_to_ras, dtype=np.float64)) @ np.append(np.asarray(ras, dtype=np.float64), 1.0)
    )[:3]
