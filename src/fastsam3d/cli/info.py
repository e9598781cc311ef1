"""``fastsam3d info``: an image's shape, spacing and orientation."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("info", help="print an image's shape, spacing and orientation")
    parser.add_argument("image", type=Path)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    import numpy as np

    from ..io import read_volume

    volume = read_volume(args.image)
    array = volume.array
    print(f"file:        {args.image}")
    print(f"shape:       {' x '.join(map(str, volume.shape))} (i, j, k)  dtype {array.dtype}")
    print(f"spacing:     {', '.join(f'{s:.4g}' for s in volume.spacing)} mm")
    print(f"origin:      {', '.join(f'{o:.2f}' for o in volume.origin)} mm (LPS)")
    print(f"orientation: {volume.orientation}")
    print(f"direction:   {np.array2string(volume.direction, precision=4, suppress_small=True).replace(chr(10), '')}")
    print(f"intensity:   min {array.min():.4g}, max {array.max():.4g}, mean {array.mean():.4g}")
