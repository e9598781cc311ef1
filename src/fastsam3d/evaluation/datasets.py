"""Evaluation cases: (image, label map, class ids) from the layouts researchers have on disk.

Accepted by :func:`load_cases`:

* a manifest ``dataset.json`` with ``cases: [{name, image, label, labels?}]`` and optional
  top-level ``labels: {id: name}`` (what ``fastsam3d data fetch`` writes);
* an nnU-Net dataset folder (or its ``dataset.json``): ``imagesTr/<case>_0000<ending>`` +
  ``labelsTr/<case><ending>`` (``imagesTs``/``labelsTs`` when present), ``labels`` as
  ``{name: id}`` (v2) or ``{id: name}`` (v1), first channel only;
* the FastSAM3D / SAM-Med3D layout: any ``<structure>/.../imagesTr`` + ``labelsTr`` folders
  below DIR with binary label maps (class 1, named by the structure folder).

Images may be NIfTI, NRRD, MHA or a DICOM series folder.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import FastSAM3DError
from ..io import Volume, align_label, read_volume

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd")


@dataclass(frozen=True)
class Case:
    """One image with its label map and the structures (class id -> name) to evaluate."""

    name: str
    image: Path
    label: Path
    classes: dict[int, str] = field(default_factory=dict)

    def load(self) -> tuple[Volume, Volume]:
        """Read image and label map; the label map is aligned onto the image grid."""
        image = read_volume(self.image)
        label = read_volume(self.label)
        return image, align_label(image, label, self.image, self.label)


def load_cases(data: str | Path, classes: list[str] | None = None) -> list[Case]:
    """Cases from a manifest, an nnU-Net dataset or a FastSAM3D folder (see module docstring).

    ``classes`` keeps only the named structures (names or ids).
    """
    path = Path(data)
    if not path.exists():
        raise FastSAM3DError(f"no data at {path}")
    if path.is_file():
        cases = _from_json(path)
    elif (path / "dataset.json").is_file():
        cases = _from_json(path / "dataset.json")
    else:
        cases = _from_fastsam3d_layout(path)
    if not cases:
        raise FastSAM3DError(f"found no (image, label) pairs in {path}")
    if classes:
        wanted = {c.strip() for c in classes}
        cases = [
            Case(c.name, c.image, c.label, {k: v for k, v in c.classes.items() if v in wanted or str(k) in wanted})
            for c in cases
        ]
        if not any(c.classes for c in cases):
            raise FastSAM3DError(f"none of the classes {sorted(wanted)} is defined in {path}")
    return cases


def _labels(mapping: dict) -> dict[int, str]:
    """``{id: name}`` from nnU-Net v1 (``{"1": "liver"}``) or v2 (``{"liver": 1}``) label dicts."""
    labels: dict[int, str] = {}
    for key, value in mapping.items():
        if str(key).isdigit():
            labels[int(key)] = str(value)
        elif isinstance(value, int) or str(value).isdigit():
            labels[int(value)] = str(key)
    labels.pop(0, None)  # background
    return labels


def _from_json(path: Path) -> list[Case]:
    try:
        spec = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise FastSAM3DError(f"cannot read dataset description {path}: {error}") from error
    root = path.parent
    common = _labels(spec.get("labels", {}))
    if "cases" in spec:
        return [
            Case(
                str(c.get("name", Path(c["image"]).name)),
                root / c["image"],
                root / c["label"],
                _labels(c["labels"]) if "labels" in c else common,
            )
            for c in spec["cases"]
        ]
    ending = spec.get("file_ending", ".nii.gz")
    cases = []
    for images, labels in (("imagesTs", "labelsTs"), ("imagesTr", "labelsTr")):
        for label in sorted((root / labels).glob(f"*{ending}")):
            name = label.name[: -len(ending)]
            image = root / images / f"{name}_0000{ending}"
            if image.exists():
                cases.append(Case(name, image, label, common))
    if not cases and "training" in spec:  # nnU-Net v1 lists pairs explicitly
        for item in spec["training"]:
            image = Path(item["image"])
            image = (
                image.with_name(image.name.replace(ending, f"_0000{ending}")) if not (root / image).exists() else image
            )
            cases.append(Case(Path(item["label"]).name.replace(ending, ""), root / image, root / item["label"], common))
    return cases


def _from_fastsam3d_layout(root: Path) -> list[Case]:
    cases = []
    for images in sorted(root.rglob("imagesTr")):
        labels = images.parent / "labelsTr"
        if not labels.is_dir():
            continue
        structure = images.parent.relative_to(root).parts[0] if images.parent != root else root.name
        for label in sorted(labels.iterdir()):
            suffix = next((s for s in IMAGE_SUFFIXES if label.name.endswith(s)), None)
            image = images / label.name
            if suffix and image.exists():
                name = f"{images.parent.relative_to(root).as_posix()}/{label.name[: -len(suffix)]}"
                cases.append(Case(name, image, label, {1: structure}))
    return cases
