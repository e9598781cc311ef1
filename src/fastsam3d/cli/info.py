"""``fastsam3d info``: an image's shape, spacing and orientation; origin and direction in LPS and RAS, labelled."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("info", help="print an image's shape, spacing and orientation")
    parser.add_argument("image", type=Path)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    from ..io import lps_to_ras, read_volume

    volume = read_volume(args.image)
    array = volume.array
    code = volume.orientation
    names = {"L": "left", "R": "right", "P": "posterior", "A": "anterior", "S": "superior", "I": "inferior"}
    print(f"file:            {args.image}")
    print(f"shape:           {' x '.join(map(str, volume.shape))} (i, j, k: 0-based, nibabel data[i, j, k])")
    print(f"dtype:           {array.dtype}")
    print(f"spacing:         {', '.join(f'{s:.4g}' for s in volume.spacing)} mm (along i, j, k)")
    print(f"orientation:     {code} (i toward {names[code[0]]}, j {names[code[1]]}, k {names[code[2]]})")
    print(f"origin (LPS):    {_vector(volume.origin)} mm (voxel 0,0,0; ITK, DICOM, Slicer)")
    print(f"origin (RAS):    {_vector(lps_to_ras(volume.origin))} mm (nibabel, FreeSurfer)")
    print(f"direction (LPS): {_matrix(volume.direction)} (columns: axes i, j, k)")
    print(f"direction (RAS): {_matrix(lps_to_ras(volume.direction.T).T)}")
    print(f"intensity:       min {array.min():.4g}, max {array.max():.4g}, mean {array.mean():.4g}")


def _vector(values) -> str:
    return ", ".join(f"{round(v, 2) + 0.0:.2f}" for v in values)


def _matrix(matrix) -> str:
    return "[" + "; ".join(" ".join(f"{round(v, 6) + 0.0:.4g}" for v in row) for row in matrix) + "]"
