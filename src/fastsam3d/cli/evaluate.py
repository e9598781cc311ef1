"""``fastsam3d evaluate``: simulated interactive evaluation of one or more models."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from ..errors import FastSAM3DError

log = logging.getLogger(__name__)


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="simulated interactive evaluation: Dice/NSD per click, timings, report",
        description="Runs every model on every structure of every case with simulated prompts and writes "
        "results.csv, summary.json, summary.csv, dice_per_click.png, time_per_click.png and report.md "
        "(with box+5/cvpr25 also challenge_metrics.csv: the CVPR 2025 challenge's per-case CSV) into --out. "
        "Exit status 1 when some case failed. Under torchrun the cases are sharded over the ranks.",
    )
    parser.add_argument(
        "--data", required=True, type=Path, help="manifest/nnU-Net dataset.json, nnU-Net folder or FastSAM3D folder"
    )
    parser.add_argument(
        "--model",
        dest="models",
        action="append",
        required=True,
        metavar="NAME|PATH|NAME=CKPT",
        help="model to evaluate (repeat for a comparison); 'random-walker' is the classical baseline",
    )
    parser.add_argument(
        "--protocol",
        default="center",
        choices=("fastsam3d", "center", "random", "box+5", "cvpr25", "lasso", "scribble"),
        help="simulated user (default center); box+5 = cvpr25: the CVPR 2025 interactive challenge "
        "(box, none for vessels, then 5 clicks; DSC/NSD AUC, finals, time per step; docs/evaluation.md); "
        "lasso / scribble: a lasso on the structure's largest slice or a scribble along its medial axis, then center clicks",
    )
    parser.add_argument("--clicks", type=int, help="interaction steps per structure (default 5; 6 for box+5)")
    parser.add_argument(
        "--no-box",
        metavar="REGEX[,REGEX...]",
        help="box+5/cvpr25: structure names (regular expressions, '_' read as space) that get no box "
        "(default: vessel names, aorta/artery/vein/vena/portal/iliac/carotid/...; 'none': every structure gets one)",
    )
    parser.add_argument("--classes", help="comma-separated class names or ids (default: all present)")
    parser.add_argument("--cases", help="comma-separated case names to evaluate (default: all)")
    parser.add_argument("--out", type=Path, required=True, help="report folder")
    parser.add_argument("--workers", type=int, default=1, help="cases evaluated in parallel processes")
    parser.add_argument("--seed", type=int, default=2023)
    parser.add_argument("--nsd-tolerance", type=float, default=2.0, help="surface Dice tolerance in mm (default 2)")
    parser.add_argument("--hd95", action="store_true", help="also compute the 95th-percentile Hausdorff distance")
    parser.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..extras import require_extra

    require_extra("eval", "monai", "skimage", "matplotlib", feature="fastsam3d evaluate")
    from ..evaluation.evaluate import evaluate

    if args.workers < 1:
        raise FastSAM3DError("--workers must be at least 1")
    classes = [c for c in (args.classes or "").split(",") if c.strip()] or None
    cases = [c.strip() for c in (args.cases or "").split(",") if c.strip()] or None
    no_box = None
    if args.no_box is not None:
        no_box = [] if args.no_box.strip() == "none" else [p.strip() for p in args.no_box.split(",") if p.strip()]
    summary, failed = evaluate(
        args.data,
        args.models,
        args.out,
        protocol=args.protocol,
        steps=args.clicks,
        classes=classes,
        case_names=cases,
        workers=args.workers,
        seed=args.seed,
        nsd_tolerance=args.nsd_tolerance,
        hd95=args.hd95,
        device=args.device,
        progress=not args.quiet,
        no_box=no_box,
    )
    for model, values in summary.items():
        curve = ", ".join(f"{v:.3f}" for v in values["dice_per_step"])
        log.info(
            f"{model}: {values['structures']} structures, Dice per step [{curve}], "
            f"clicks honoured {100 * values['clicks_honoured']:.1f} %, "
            f"first step {values['first_step_ms']:.0f} ms, later {values['later_step_ms']:.0f} ms"
        )
        if "challenge" in values:
            c = values["challenge"]
            log.info(
                f"{model} (CVPR 2025 challenge, {c['cases']} cases): DSC_AUC {c['dsc_auc']:.3f}, "
                f"NSD_AUC {c['nsd_auc']:.3f}, final DSC {c['dsc_final']:.3f}, final NSD {c['nsd_final']:.3f}, "
                f"{c['running_time_s']:.1f} s per case"
            )
    if summary:
        log.info(f"report: {args.out / 'report.md'}")
    if failed:
        log.error(f"{failed} case(s) or structure(s) failed; see {args.out / 'results.csv'}")
        return 1
    return 0
