"""``fastsam3d prepare nnunet SRC DST``: an nnU-Net dataset in the FastSAM3D / SAM-Med3D layout.

As the official ``prepare_data_from_nnUNet`` / ``prepare_uunet`` scripts: one folder per class,
``DST/<class>/<dataset>/imagesTr/<case>.nii.gz`` + ``labelsTr/<case>.nii.gz`` (binary), the image
resampled to 1.5 mm isotropic (linear), each class mask resampled onto that grid (nearest
neighbour); ``<dataset>`` is the source folder name after its first ``_`` (``Dataset003_Liver`` ->
``Liver``). A class is skipped in a case where it covers less than ``min_volume_mm3`` (official:
10 mm³). Directions and origins are kept, so every mask lies where it lay in the source. The
resampled image is written once per case and hard-linked (or copied) into the other class folders.
"""

from __future__ import annotations

import os
import shutil
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from tqdm import tqdm

from ..errors import FastSAM3DError
from ..evaluation.datasets import load_cases
from ..io import Volume, write_volume


@dataclass
class PrepareSummary:
    cases: int = 0
    written: Counter = field(default_factory=Counter)  # class -> cases written
    skipped: list[tuple[str, str, str]] = field(default_factory=list)  # (case, class or "", reason)

    def report(self) -> str:
        lines = [f"{self.cases} cases, {sum(self.written.values())} class masks in {len(self.written)} classes"]
        lines += [f"  {name}: {count} cases" for name, count in sorted(self.written.items())]
        if self.skipped:
            lines.append(f"skipped {len(self.skipped)}:")
            lines += ["  " + " ".join(part for part in entry if part) for entry in self.skipped]
        return "\n".join(lines)


def dataset_name(source: Path) -> str:
    """``Dataset003_Liver`` -> ``Liver`` (the official scripts' rule); other names unchanged."""
    name = source.resolve().name
    return name.split("_", 1)[1] if "_" in name else name


def _folder_name(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name.strip().replace(" ", "_"))


def resample_to_spacing(image: sitk.Image, spacing: float, interpolator=sitk.sitkLinear) -> sitk.Image:
    """The same field of view (first voxel, direction) on an isotropic grid."""
    size = [max(1, int(round(n * s / spacing))) for n, s in zip(image.GetSize(), image.GetSpacing())]
    return sitk.Resample(image, size, sitk.Transform(), interpolator, image.GetOrigin(), (spacing,) * 3,
                         image.GetDirection(), 0, image.GetPixelID())


def prepare_nnunet(source: Path, target: Path, spacing: float = 1.5, min_volume_mm3: float = 10.0,
                   classes: list[str] | None = None, overwrite: bool = False, progress: bool = True) -> PrepareSummary:
    """Convert ``source`` (an nnU-Net folder with ``dataset.json``) into ``target``; see the module docstring."""
    source, target = Path(source), Path(target)
    if not (source / "dataset.json").is_file():
        raise FastSAM3DError(f"{source} is not an nnU-Net dataset: it has no dataset.json")
    cases = load_cases(source, classes)
    name = dataset_name(source)
    wanted = sorted({n for case in cases for n in case.classes.values()})
    existing = [c for c in wanted if (target / _folder_name(c) / name).exists()]
    if existing and not overwrite:
        raise FastSAM3DError(f"{target} already holds {name} for {', '.join(existing[:5])}: use --overwrite")
    summary = PrepareSummary()
    for case in tqdm(cases, desc=f"prepare {name}", unit="case", disable=not progress, dynamic_ncols=True):
        try:
            image, label = case.load()
        except FastSAM3DError as error:
            summary.skipped.append((case.name, "", f"unreadable: {error}"))
            continue
        summary.cases += 1
        resampled = resample_to_spacing(image.to_sitk(), spacing)
        voxel_volume = float(np.prod(image.spacing))
        counts = np.bincount(label.array.astype(np.int64, copy=False).ravel())
        first_image: Path | None = None
        for class_id, class_name in sorted(case.classes.items()):
            voxels = int(counts[class_id]) if class_id < len(counts) else 0
            if voxels * voxel_volume < min_volume_mm3:
                summary.skipped.append((case.name, class_name, "absent" if voxels == 0 else f"{voxels * voxel_volume:.1f} mm³ < {min_volume_mm3:g}"))
                continue
            folder = target / _folder_name(class_name) / name
            mask = label.with_array((label.array == class_id).astype(np.uint8)).to_sitk()
            mask = sitk.Resample(mask, resampled, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
            if not sitk.GetArrayViewFromImage(mask).any():
                summary.skipped.append((case.name, class_name, "vanished at the new spacing"))
                continue
            image_path = folder / "imagesTr" / f"{case.name}.nii.gz"
            if first_image is None:
                first_image = write_volume(Volume.from_sitk(resampled), image_path)
            else:
                _link(first_image, image_path)
            write_volume(Volume.from_sitk(mask, "label"), folder / "labelsTr" / f"{case.name}.nii.gz")
            summary.written[class_name] += 1
    return summary


def _link(existing: Path, path: Path) -> None:
    """Hard link (copy across file systems), replacing atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".tmp-{path.name}")
    temp.unlink(missing_ok=True)
    try:
        os.link(existing, temp)
    except OSError:
        shutil.copyfile(existing, temp)
    os.replace(temp, path)
