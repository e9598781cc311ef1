"""A volume written as a small CT DICOM series that highdicom accepts as the source of a DICOM-SEG."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from fastsam3d.io import Volume


def write_dicom_series(volume: Volume, folder: Path) -> Path:
    """One CT file per slice k (rows along j, columns along i), with the tags DICOM-SEG needs."""
    folder.mkdir(parents=True)
    image = sitk.Cast(volume.to_sitk(), sitk.sitkInt16)
    for k in range(volume.shape[2]):
        piece = image[:, :, k]
        position = volume.index_to_world(np.array([[0, 0, k]]))[0]
        tags = {
            "0008|0016": "1.2.840.10008.5.1.4.1.1.2",
            "0008|0018": f"1.2.826.0.1.3680043.10.1.{k + 1}",
            "0008|0020": "20240101",
            "0008|0030": "120000",
            "0008|0050": "1",
            "0008|0060": "CT",
            "0010|0010": "Test^Patient",
            "0010|0020": "test",
            "0020|000d": "1.2.826.0.1.3680043.10.2",
            "0020|000e": "1.2.826.0.1.3680043.10.3",
            "0020|0010": "1",
            "0020|0011": "1",
            "0020|0013": str(k + 1),
            "0020|0032": "\\".join(f"{v:g}" for v in position),
            "0020|0037": "1\\0\\0\\0\\1\\0",
            "0020|0052": "1.2.826.0.1.3680043.10.4",
            "0018|0050": f"{volume.spacing[2]:g}",
        }
        for tag, value in tags.items():
            piece.SetMetaData(tag, value)
        writer = sitk.ImageFileWriter()
        writer.KeepOriginalImageUIDOn()
        writer.SetFileName(str(folder / f"slice{k:03d}.dcm"))
        writer.Execute(piece)
    return folder
