"""``fastsam3d check-reference FIXTURE...``: our models against fixtures made with the public reference code."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import FastSAM3DError

TOLERANCE = 1e-4


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "check-reference",
        help="compare our models with fixtures made by the public reference code",
        description="Builds the architecture a fixture describes, loads its state dict strictly, reruns its inputs "
        "and prints the max absolute error per output. Exit status 0 only if every error is within --tolerance.",
    )
    parser.add_argument(
        "fixtures", nargs="+", type=Path, metavar="FIXTURE", help="e.g. ../shared/reference/ref_small.pt"
    )
    parser.add_argument(
        "--tolerance", type=float, default=TOLERANCE, help=f"max abs error allowed (default {TOLERANCE:g})"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..reference import check_fixture

    worst = 0.0
    for path in args.fixtures:
        try:
            report = check_fixture(path)
        except (FastSAM3DError, OSError, KeyError, RuntimeError) as error:
            print(f"fastsam3d: error: {path}: {error}", file=sys.stderr)
            return 2
        for variant, errors in report.items():
            print(f"{path.name} [{variant}]")
            for name, error in errors.items():
                flag = "ok" if error <= args.tolerance else "FAIL"
                print(f"  {name:40s} {error:.3e}  {flag}")
                worst = max(worst, error)
    print(f"max abs error {worst:.3e} (tolerance {args.tolerance:.0e})")
    return 0 if worst <= args.tolerance else 1
