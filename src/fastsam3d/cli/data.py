"""``fastsam3d data fetch``: the development data."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

log = logging.getLogger(__name__)


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("data", help="development data")
    parser.add_argument("action", choices=("fetch",), help="fetch: download TotalSegmentator's test volumes with pip")
    parser.add_argument("--root", type=Path, help="destination (default $FASTSAM3D_DATA or ~/.cache/fastsam3d)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    from ..data.devdata import fetch_dev_data

    log.info(f"development data: {fetch_dev_data(args.root / 'totalsegmentator' if args.root else None)}")
