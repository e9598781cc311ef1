"""``fastsam3d prepare nnunet``: convert a dataset for training."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from ..errors import FastSAM3DError

log = logging.getLogger(__name__)


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("prepare", help="convert datasets for training")
    formats = parser.add_subparsers(dest="format", required=True, metavar="FORMAT")
    nnunet = formats.add_parser(
        "nnunet",
        help="nnU-Net dataset -> FastSAM3D layout (one folder per class, binary masks, 1.5 mm)",
        description="Writes the training cases as DST/<class>/<modality>_<dataset>/imagesTr|labelsTr/<case>.nii.gz, "
        "as SAM-Med3D's prepare scripts: images resampled to --spacing (linear), binary masks onto the same grid "
        "(nearest), orientation and position kept; classes smaller than --min-volume in a case are skipped.",
    )
    nnunet.add_argument(
        "source", type=Path, metavar="SRC", help="nnU-Net dataset folder (dataset.json, imagesTr, labelsTr)"
    )
    nnunet.add_argument("target", type=Path, metavar="DST", help="output root; other datasets' folders there are kept")
    nnunet.add_argument("--spacing", type=float, default=1.5, help="mm")
    nnunet.add_argument(
        "--min-volume",
        type=float,
        default=10.0,
        help="mm³ a class needs in a case, at the source spacing (official: 10)",
    )
    nnunet.add_argument("--classes", help="comma-separated class names or ids (default: all)")
    nnunet.add_argument("--overwrite", action="store_true", help="replace this dataset's existing class folders")
    nnunet.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    from ..data.prepare import prepare_nnunet

    if args.spacing <= 0:
        raise FastSAM3DError("--spacing must be positive")
    if args.min_volume < 0:
        raise FastSAM3DError("--min-volume must not be negative")
    classes = [c.strip() for c in args.classes.split(",") if c.strip()] if args.classes else None
    summary = prepare_nnunet(args.source, args.target, args.spacing, args.min_volume, classes, args.overwrite)
    log.info(summary.report())
