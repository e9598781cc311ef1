"""``fastsam3d demo``: the quick start on a sample volume with simulated clicks."""

from __future__ import annotations

import argparse
from pathlib import Path

from .arguments import add_model_arguments, load_model


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("demo", help="segment a sample volume with simulated clicks (the quick start)")
    parser.add_argument(
        "--out", type=Path, default=Path("fastsam3d-demo"), help="output folder (default fastsam3d-demo)"
    )
    parser.add_argument("--clicks", type=int, default=5, help="simulated clicks per structure (default 5)")
    add_model_arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    from ..demo import run_demo
    from ..io import check_folder

    check_folder(args.out)
    run_demo(load_model(args), args.out, args.clicks, args.device)
