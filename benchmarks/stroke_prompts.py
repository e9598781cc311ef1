"""Scribble and lasso prompts on the held-out development volumes (TotalSegmentator's example CT,
MR and DICOM CT; none trained on), through ``Session.add_lasso`` / ``add_scribble``:

* a lasso tracing each structure's outline on its *middle* slice (across the axis closest to S-I):
  the 3D mask's Dice, and the share of the lasso's voxels inside the mask;
* a scribble along each vessel's centreline over 3 slices (the vessel's centroid on its middle
  slice and the slices either side): Dice on that vessel;
* time: a 200-point scribble against a click, both on a cached ROI (median of ``--repeats``).

    python benchmarks/stroke_prompts.py [--model default] [--classes liver,aorta,...] [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np
import torch

from fastsam3d.clicks import center_click, dice
from fastsam3d.data.devdata import dev_manifest
from fastsam3d.engine.roi import canonical_axes
from fastsam3d.engine.session3d import Session
from fastsam3d.evaluation.datasets import load_cases
from fastsam3d.simulated_strokes import largest_component, traced_lasso

DEFAULT_CLASSES = "liver,spleen,kidney_left,kidney_right,gallbladder,pancreas,stomach,heart,urinary_bladder"
VESSELS = "aorta,inferior_vena_cava,portal_vein_and_splenic_vein,iliac_artery_left,iliac_artery_right"


def middle_slice_lasso(target: np.ndarray, axis: int) -> np.ndarray | None:
    """The outline of the structure on the middle of the slices it occupies."""
    others = tuple(a for a in range(3) if a != axis)
    occupied = np.flatnonzero(target.any(axis=others))
    only_middle = np.zeros_like(target)
    middle = [slice(None)] * 3
    middle[axis] = int(occupied[len(occupied) // 2])
    only_middle[tuple(middle)] = target[tuple(middle)]
    return traced_lasso(only_middle, axis)


def centreline_scribble(target: np.ndarray, axis: int) -> np.ndarray:
    """The vessel's centroid (of its largest part) on its middle slice and the slices either side."""
    others = tuple(a for a in range(3) if a != axis)
    occupied = np.flatnonzero(target.any(axis=others))
    middle = int(occupied[len(occupied) // 2])
    points = []
    for index in (middle - 1, middle, middle + 1):
        plane = largest_component(np.take(target, index, axis=axis))
        if plane.any():
            centre = np.argwhere(plane).mean(0)
            nearest = np.argwhere(plane)[np.argmin(np.linalg.norm(np.argwhere(plane) - centre, axis=1))]
            point = np.empty(3)
            point[axis], point[list(others)] = index, nearest
            points.append(point)
    return np.array(points)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default")
    parser.add_argument("--classes", default=DEFAULT_CLASSES)
    parser.add_argument("--vessels", default=VESSELS)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(
        f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"CPU capability {torch.backends.cpu.get_cpu_capability()}"
    )
    session = Session(args.model, device="cpu")
    wanted = set(args.classes.split(",")) | set(args.vessels.split(","))
    lasso_dice, scribble_dice, honoured, click_ms, scribble_ms = [], [], [], [], []
    for case in load_cases(dev_manifest()):
        volume, label_volume = case.load()
        labels = np.asarray(label_volume.array)
        session.set_image(volume)
        axis = canonical_axes(volume.direction)[0][2]
        for class_id, name in case.classes.items():
            if name not in wanted or not (labels == class_id).any():
                continue
            target = labels == class_id
            session.add_object(name)
            if name in args.vessels.split(","):
                session.add_scribble(centreline_scribble(target, axis))
                scribble_dice.append(dice(session.mask(), target))
                print(f"{case.name:9s} {name:30s} scribble over 3 slices: Dice {scribble_dice[-1]:.3f}")
                continue
            polygon = middle_slice_lasso(target, axis)
            session.add_lasso(polygon)
            stroke = session.objects[session.active].state.strokes[-1]
            lasso_dice.append(dice(session.mask(), target))
            honoured.append(float(session.mask()[tuple(stroke.voxels.T)].mean()))
            print(f"{case.name:9s} {name:30s} lasso on the middle slice: Dice {lasso_dice[-1]:.3f}")
            point, positive = center_click(session.mask(), target, volume.spacing)
            for _ in range(args.repeats):  # a click and a 200-point scribble on the same cached ROI
                started = time.perf_counter()
                session.add_click(point, positive)
                click_ms.append(1e3 * (time.perf_counter() - started))
                session.undo()
                line = np.linspace(point - [6, 6, 0], point + [6, 6, 0], 200).clip(0, np.array(volume.shape) - 1)
                started = time.perf_counter()
                session.add_scribble(line, positive)
                scribble_ms.append(1e3 * (time.perf_counter() - started))
                session.undo()
    print(f"lasso on the middle slice: mean Dice {np.mean(lasso_dice):.3f} over {len(lasso_dice)} structures")
    print(f"lasso voxels inside the mask: min {100 * min(honoured):.1f} %, mean {100 * np.mean(honoured):.1f} %")
    print(f"vessel scribble over 3 slices: mean Dice {np.mean(scribble_dice):.3f} over {len(scribble_dice)} vessels")
    print(f"cached click p50 {np.median(click_ms):.0f} ms; 200-point scribble p50 {np.median(scribble_ms):.0f} ms")


if __name__ == "__main__":
    main()
