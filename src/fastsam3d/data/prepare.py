"""``fastsam3d prepare nnunet SRC DST``: an nnU-Net dataset in the FastSAM3D / SAM-Med3D layout.

As the official ``prepare_data_from_nnUNet`` / ``prepare_uunet`` scripts and the layout in their
READMEs: one folder per class, ``DST/<class>/<modality>_<dataset>/imagesTr/<case>.nii.gz`` +
``labelsTr/<case>.nii.gz`` (binary uint8), e.g. ``liver/ct_Liver`` for ``Dataset003_Liver``
(``<dataset>`` loses its ``DatasetNNN_`` / ``TaskNNN_`` prefix; ``<modality>`` is the first
channel's name in dataset.json, left out when it has none). Only the training cases
(``imagesTr``) are converted.

Resampling follows TorchIO's ``Resample``, which the official scripts call: an isotropic grid with
the source's direction and field-of-view centre, its size floored so that it never reaches outside
the source; the image is interpolated linearly, the label map by nearest neighbour. Every mask
therefore lies where it lay in the source. A class is skipped in a case where it covers less than
``min_volume_mm3`` at the source spacing (official: 10 mm³). The resampled image is written once
per case and hard-linked (or copied) into the other class folders.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
from collections import Counter, defaultdict
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from tqdm import tqdm

from ..errors import FastSAM3DError
from ..evaluation.datasets import Case, load_cases
from ..io import Volume, atomic_output, write_volume

NNUNET_PREFIX = re.compile(r"^(Dataset|Task)\d+_")
NNUNET_NORMALISATIONS = {"nonorm", "zscore", "rescale_to_0_1", "rgb_to_0_1"}  # channel names that are no modality


@dataclass
class PrepareSummary:
    """What :func:`prepare_nnunet` wrote and what it skipped, and why."""

    cases: int = 0
    written: Counter = field(default_factory=Counter)  # class -> cases written
    skipped: dict[tuple[str, str], list[str]] = field(default_factory=lambda: defaultdict(list))  # (class, why): cases
    failed: list[tuple[str, str]] = field(default_factory=list)  # (case, error): cases that could not be read

    def report(self) -> str:
        lines = [f"{self.cases} cases, {sum(self.written.values())} class masks in {len(self.written)} classes"]
        lines += [f"  {name}: {count} of {self.cases} cases" for name, count in sorted(self.written.items())]
        if self.skipped:
            lines.append("skipped classes:")
            lines += [f"  {name}: {why} in {_case_list(cases)}" for (name, why), cases in sorted(self.skipped.items())]
        if self.failed:
            lines.append(f"skipped {len(self.failed)} unreadable cases:")
            lines += [f"  {case}: {error}" for case, error in self.failed]
        return "\n".join(lines)


def _case_list(names: list[str], shown: int = 5) -> str:
    return ", ".join(names) if len(names) <= shown else f"{len(names)} cases ({', '.join(names[:shown])}, ...)"


def _folder_name(name: str) -> str:
    """A class or dataset name as one path component (spaces to ``_``, as the official scripts)."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name.strip().replace(" ", "_"))


def dataset_folder_name(source: Path, spec: dict) -> str:
    """``<modality>_<dataset>`` from the nnU-Net folder name and dataset.json (``ct_Liver``)."""
    name = NNUNET_PREFIX.sub("", source.resolve().name)
    channels = spec.get("channel_names") or spec.get("modality") or {}
    modality = str(channels.get("0", "")).strip().lower() if isinstance(channels, dict) else ""
    if modality and modality not in NNUNET_NORMALISATIONS:
        name = f"{modality}_{name}"
    return _folder_name(name)


def isotropic_grid(volume: Volume, spacing: float) -> sitk.Image:
    """An empty image at ``spacing`` mm over ``volume``'s field of view: same direction and centre,
    ``floor(size * old spacing / spacing)`` voxels per axis (TorchIO's ``Resample`` grid)."""
    size = np.maximum(1, np.floor(np.array(volume.shape) * volume.spacing / spacing + 1e-6)).astype(int)
    centre = volume.index_to_world((np.array(volume.shape) - 1) / 2)
    origin = centre - volume.direction @ ((size - 1) / 2 * spacing)
    grid = sitk.Image(size.tolist(), sitk.sitkUInt8)
    grid.SetSpacing((spacing,) * 3)
    grid.SetOrigin(origin.tolist())
    grid.SetDirection(volume.direction.flatten().tolist())
    return grid


def _resampled_case(case: Case, spacing: float) -> tuple[Volume, Volume, np.ndarray]:
    """The image (linear) and label map (nearest) on the isotropic grid, and the volume (mm³ at the
    source spacing) of every label value."""
    image, label = case.load()
    if label.array.min() < 0:
        raise FastSAM3DError(f"label map {case.label} has negative values")
    volumes_mm3 = np.bincount(label.array.astype(np.int64, copy=False).ravel()) * float(np.prod(label.spacing))
    grid = isotropic_grid(image, spacing)
    resampled_image = sitk.Resample(image.to_sitk(), grid, sitk.Transform(), sitk.sitkLinear, 0.0)
    resampled_label = sitk.Resample(label.to_sitk(), grid, sitk.Transform(), sitk.sitkNearestNeighbor, 0.0)
    image, label = (
        Volume.from_sitk(resampled_image, str(case.image)),
        Volume.from_sitk(resampled_label, str(case.label)),
    )
    return image, label, volumes_mm3


def prepare_nnunet(
    source: Path,
    target: Path,
    spacing: float = 1.5,
    min_volume_mm3: float = 10.0,
    classes: list[str] | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> PrepareSummary:
    """Convert the training cases of ``source`` (an nnU-Net folder) into ``target``; see the module
    docstring. ``classes`` (names or ids) selects classes; ``overwrite`` replaces this dataset's
    class folders in ``target``, which are otherwise refused."""
    source, target = Path(source), Path(target)
    cases = _training_cases(source, classes)
    dataset = dataset_folder_name(source, json.loads((source / "dataset.json").read_text()))
    folders = {name: target / _folder_name(name) / dataset for case in cases for name in case.classes.values()}
    existing = [folder for folder in folders.values() if folder.exists()]
    if existing and not overwrite:
        raise FastSAM3DError(
            f"{existing[0]} exists ({len(existing)} class folders of this dataset in {target}): "
            "pass --overwrite to replace them"
        )
    for folder in existing:
        shutil.rmtree(folder)
    summary = PrepareSummary()
    for case in tqdm(cases, desc=f"prepare {dataset}", unit="case", disable=not progress, dynamic_ncols=True):
        try:
            image, label, volumes_mm3 = _resampled_case(case, spacing)
        except FastSAM3DError as error:
            summary.failed.append((case.name, str(error)))
            tqdm.write(f"fastsam3d: warning: skipped case {case.name}: {error}", file=sys.stderr)
            continue
        summary.cases += 1
        written_image: Path | None = None
        for class_id, name in sorted(case.classes.items()):
            volume = volumes_mm3[class_id] if class_id < len(volumes_mm3) else 0.0
            if volume == 0 or volume < min_volume_mm3:
                summary.skipped[name, "absent" if volume == 0 else f"under {min_volume_mm3:g} mm³"].append(case.name)
                continue
            mask = label.array == class_id
            if not mask.any():
                summary.skipped[name, f"lost at {spacing:g} mm"].append(case.name)
                continue
            image_path = folders[name] / "imagesTr" / f"{case.name}.nii.gz"
            if written_image is None:
                written_image = write_volume(image, image_path)
            else:
                _link(written_image, image_path)
            write_volume(label.with_array(mask.astype(np.uint8)), folders[name] / "labelsTr" / f"{case.name}.nii.gz")
            summary.written[name] += 1
    if not summary.cases:
        raise FastSAM3DError(f"none of the {len(cases)} cases could be read; first: {summary.failed[0][1]}")
    return summary


def _training_cases(source: Path, classes: list[str] | None) -> list[Case]:
    """The ``imagesTr`` / ``labelsTr`` cases of an nnU-Net folder, with the selected classes only."""
    if not source.is_dir():
        raise FastSAM3DError(f"no such folder: {source}")
    for required in ("dataset.json", "imagesTr", "labelsTr"):
        if not (source / required).exists():
            raise FastSAM3DError(f"{source} is not an nnU-Net dataset: it has no {required}")
    cases = [case for case in load_cases(source) if case.image.parent.name != "imagesTs"]
    if not cases:
        raise FastSAM3DError(f"{source / 'labelsTr'} has no label map with an image in imagesTr")
    defined = {class_id: name for case in cases for class_id, name in case.classes.items()}
    if not defined:
        raise FastSAM3DError(f"{source / 'dataset.json'} defines no foreground labels")
    if len({_folder_name(name) for name in defined.values()}) < len(defined):
        raise FastSAM3DError(
            f"the class names in {source / 'dataset.json'} do not give one folder per class: "
            f"{', '.join(defined.values())}"
        )
    if not classes:
        return cases
    unknown = [c for c in classes if c not in defined.values() and c not in map(str, defined)]
    if unknown:
        raise FastSAM3DError(
            f"--classes {', '.join(unknown)} not in {source / 'dataset.json'} (it has: {', '.join(defined.values())})"
        )
    wanted = set(classes)
    return [replace(c, classes={i: n for i, n in c.classes.items() if n in wanted or str(i) in wanted}) for c in cases]


def _link(existing: Path, path: Path) -> None:
    """Hard link (copy across file systems), replacing atomically."""
    with atomic_output(path) as temp:
        try:
            os.link(existing, temp)
        except OSError:
            shutil.copyfile(existing, temp)
