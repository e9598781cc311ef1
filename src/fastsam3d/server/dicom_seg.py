"""DICOM-SEG export (highdicom) of a label map made on a DICOM series."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .. import __version__
from ..errors import VolumeError
from ..io import Volume, atomic_output


def write_dicom_seg(labels: np.ndarray, volume: Volume, dicom_dir: Path, names: dict[int, str], path: Path) -> Path:
    """One binary segment per object label present, on the frames of the source series; written atomically."""
    import highdicom as hd
    import pydicom
    from pydicom.sr.codedict import codes

    sources = []
    for file in sorted(Path(dicom_dir).iterdir()):
        try:
            dataset = pydicom.dcmread(file)
        except (pydicom.errors.InvalidDicomError, OSError):
            continue
        if "ImagePositionPatient" in dataset and "PixelData" in dataset:
            _fill_from_file_meta(dataset)
            sources.append(dataset)
    if not sources:
        raise VolumeError(f"no DICOM images with positions in {dicom_dir}")
    slices = [
        round(float(volume.world_to_index(np.array([[float(v) for v in d.ImagePositionPatient]]))[0, 2]))
        for d in sources
    ]
    order = np.argsort(slices)
    sources = [sources[i] for i in order]
    slices = [slices[i] for i in order]
    present = [label for label in sorted(names) if (labels == label).any()]
    if not present:
        raise VolumeError("the segmentation is empty: nothing to export")
    # frame of source slice k: rows run along j, columns along i (the DICOM pixel grid)
    frames = np.stack([labels[:, :, k].T for k in slices])
    pixels = np.stack([frames == label for label in present], axis=-1)
    algorithm = hd.AlgorithmIdentificationSequence(
        name="fastsam3d", version=__version__, family=codes.cid7162.ArtificialIntelligence
    )
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=names[label] or f"object {label}",
            segmented_property_category=codes.SCT.Tissue,
            segmented_property_type=codes.SCT.Tissue,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.SEMIAUTOMATIC,
            algorithm_identification=algorithm,
        )
        for number, label in enumerate(present, start=1)
    ]
    segmentation = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=pixels,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=hd.UID(),
        series_number=900,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="fastsam3d",
        manufacturer_model_name="fastsam3d",
        software_versions=__version__,
        device_serial_number="0",
        series_description="fastsam3d segmentation",
    )
    with atomic_output(path) as temp:
        segmentation.save_as(temp)
    return path


def _fill_from_file_meta(dataset) -> None:
    """Anonymised files sometimes blank the SOP class/instance UIDs that the file meta still holds."""
    meta = getattr(dataset, "file_meta", None)
    if meta is None:
        return
    if not dataset.get("SOPClassUID") and meta.get("MediaStorageSOPClassUID"):
        dataset.SOPClassUID = meta.MediaStorageSOPClassUID
    if not dataset.get("SOPInstanceUID") and meta.get("MediaStorageSOPInstanceUID"):
        dataset.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
