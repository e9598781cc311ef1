"""Per-object statistics of a label map (voxels, millilitres, bounding box, mean intensity), written
as JSON or CSV."""

from __future__ import annotations

import csv
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .engine.labelmap import bounding_box
from .errors import VolumeError
from .io import Volume, atomic_output, check_folder

STATS_SUFFIXES = (".json", ".csv")


@dataclass(frozen=True)
class ObjectStats:
    """One object: ``bbox_min`` / ``bbox_max`` are inclusive input voxel indices (i, j, k), None
    when the object is empty; ``mean_intensity`` is in the image's units (None when empty)."""

    image: str
    name: str
    label: int
    voxels: int
    volume_ml: float
    bbox_min: list[int] | None
    bbox_max: list[int] | None
    mean_intensity: float | None


def object_stats(volume: Volume, labels: np.ndarray, names: dict[int, str], image: str = "") -> list[ObjectStats]:
    """Statistics of each named label value of ``labels`` (on ``volume``'s grid), in label order."""
    voxel_ml = float(np.prod(volume.spacing)) / 1000.0
    rows = []
    for label in sorted(names):
        mask = labels == label
        count = int(mask.sum())
        box = bounding_box(mask)
        rows.append(
            ObjectStats(
                image=image,
                name=names[label],
                label=label,
                voxels=count,
                volume_ml=round(count * voxel_ml, 4),
                bbox_min=None if box is None else [s.start for s in box],
                bbox_max=None if box is None else [s.stop - 1 for s in box],
                mean_intensity=round(float(volume.array[mask].mean()), 4) if count else None,
            )
        )
    return rows


def check_stats_path(path: str | Path) -> Path:
    """Fail early on a statistics file that is neither .json nor .csv or cannot be written."""
    path = Path(path)
    if path.suffix.lower() not in STATS_SUFFIXES:
        raise VolumeError(f"cannot write statistics to {path}: use .json or .csv")
    if path.is_dir():
        raise VolumeError(f"cannot write {path}: it is a directory")
    check_folder(path.parent)
    return path


def write_stats(rows: list[ObjectStats], path: str | Path) -> Path:
    """Write the rows atomically: JSON (a list of objects) or CSV (bounding box as six columns)."""
    path = check_stats_path(path)
    with atomic_output(path) as temp:
        if path.suffix.lower() == ".json":
            temp.write_text(json.dumps([asdict(row) for row in rows], indent=2) + "\n")
        else:
            with open(temp, "w", newline="") as handle:
                writer = csv.writer(handle)
                writer.writerow(
                    ["image", "name", "label", "voxels", "volume_ml"]
                    + [f"bbox_{end}_{axis}" for end in ("min", "max") for axis in "ijk"]
                    + ["mean_intensity"]
                )
                for row in rows:
                    box = (row.bbox_min or [""] * 3) + (row.bbox_max or [""] * 3)
                    mean = "" if row.mean_intensity is None else row.mean_intensity
                    writer.writerow([row.image, row.name, row.label, row.voxels, row.volume_ml, *box, mean])
    return path
