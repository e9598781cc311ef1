"""DICOM-SEG export (highdicom) of a label map made on a DICOM series: one segment per object, with
its name, a distinct recommended display colour and a coded term (SNOMED CT) read from the name."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import __version__
from ..errors import VolumeError
from ..io import Volume, atomic_output

# Display colours (RGB) in segment order: the web viewer's label colours.
PALETTE = (
    (230, 25, 75),
    (60, 180, 75),
    (255, 225, 25),
    (0, 130, 200),
    (245, 130, 48),
    (145, 30, 180),
    (70, 240, 240),
    (240, 50, 230),
    (210, 245, 60),
    (250, 190, 212),
)
# Words of a structure name -> the keyword of its SNOMED CT code in pydicom's ``codes.SCT``.
ANATOMY = {
    "adrenal gland": "AdrenalGland",
    "aorta": "Aorta",
    "bladder": "Bladder",
    "bone": "Bone",
    "brain": "Brain",
    "colon": "Colon",
    "duodenum": "Duodenum",
    "esophagus": "Esophagus",
    "oesophagus": "Esophagus",
    "femur": "Femur",
    "gallbladder": "Gallbladder",
    "heart": "Heart",
    "hippocampus": "Hippocampus",
    "inferior vena cava": "InferiorVenaCava",
    "kidney": "Kidney",
    "kidneys": "Kidney",
    "liver": "Liver",
    "lung": "Lung",
    "lungs": "Lung",
    "muscle": "Muscle",
    "pancreas": "Pancreas",
    "portal vein": "PortalVein",
    "prostate": "Prostate",
    "rib": "Rib",
    "skull": "Skull",
    "small intestine": "SmallIntestine",
    "spleen": "Spleen",
    "stomach": "Stomach",
    "thyroid": "Thyroid",
    "trachea": "Trachea",
    "vertebra": "Vertebra",
}
ABNORMAL = {
    "cyst": "Cyst",
    "edema": "Edema",
    "oedema": "Edema",
    "haemorrhage": "Hemorrhage",
    "hemorrhage": "Hemorrhage",
    "lesion": "Lesion",
    "mass": "Mass",
    "metastasis": "Metastasis",
    "necrosis": "Necrosis",
    "neoplasm": "Neoplasm",
    "nodule": "Nodule",
    "tumor": "Neoplasm",
    "tumour": "Neoplasm",
}


@dataclass(frozen=True)
class SegmentTerms:
    """A segment's coded category and type (pydicom ``Code``s), and the organ an abnormality lies in."""

    category: object
    type: object
    region: object | None = None


def segment_terms(name: str) -> SegmentTerms:
    """The SNOMED CT terms for a structure name: an organ it names ("Left kidney" -> Kidney, category
    Anatomical Structure), an abnormality ("liver tumour" -> Neoplasm, category Morphologically
    Altered Structure, region Liver), else the generic Tissue."""
    from pydicom.sr.codedict import codes
    from pydicom.sr.coding import Code

    text = " ".join(re.findall(r"[a-z]+", name.lower()))

    def find(table: dict[str, str]):
        hits = [keyword for words, keyword in table.items() if re.search(rf"\b{words}\b", text)]
        return getattr(codes.SCT, hits[0]) if hits else None

    organ, abnormality = find(ANATOMY), find(ABNORMAL)
    if abnormality is not None:
        return SegmentTerms(Code("49755003", "SCT", "Morphologically Altered Structure"), abnormality, organ)
    if organ is not None:
        return SegmentTerms(codes.SCT.AnatomicalStructure, organ)
    return SegmentTerms(codes.SCT.Tissue, codes.SCT.Tissue)


def segment_colour(number: int) -> tuple[int, int, int]:
    """The recommended display colour (RGB) of segment ``number`` (1, 2, ...)."""
    return PALETTE[(number - 1) % len(PALETTE)]


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
        _description(number, names[label] or f"object {label}", algorithm) for number, label in enumerate(present, 1)
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


def _description(number: int, name: str, algorithm):
    """Segment ``number``'s description: its name, coded terms and display colour."""
    import highdicom as hd

    terms = segment_terms(name)
    return hd.seg.SegmentDescription(
        segment_number=number,
        segment_label=name,
        segmented_property_category=terms.category,
        segmented_property_type=terms.type,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.SEMIAUTOMATIC,
        algorithm_identification=algorithm,
        anatomic_regions=None if terms.region is None else [terms.region],
        display_color=hd.color.CIELabColor.from_rgb(*segment_colour(number)),
    )


def _fill_from_file_meta(dataset) -> None:
    """Anonymised files sometimes blank the SOP class/instance UIDs that the file meta still holds."""
    meta = getattr(dataset, "file_meta", None)
    if meta is None:
        return
    if not dataset.get("SOPClassUID") and meta.get("MediaStorageSOPClassUID"):
        dataset.SOPClassUID = meta.MediaStorageSOPClassUID
    if not dataset.get("SOPInstanceUID") and meta.get("MediaStorageSOPInstanceUID"):
        dataset.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
