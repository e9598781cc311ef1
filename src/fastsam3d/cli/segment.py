"""``fastsam3d segment``: one object from clicks and/or a box, written as a label map."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from ..errors import FastSAM3DError
from .arguments import AppendClick, add_model_arguments, box, click, load_model

log = logging.getLogger(__name__)


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "segment",
        help="segment one object from clicks",
        description="Voxel indices (--point, --box) are 0-based i,j,k in the image's own index order, as stored in "
        "the file: i,j,k indexes nibabel's data[i, j, k] (ITK/SimpleITK index (i, j, k), numpy array of "
        "sitk.GetArrayFromImage [k, j, i]); `fastsam3d info` prints the shape in this order. World points are "
        "millimetres in LPS (ITK, Slicer), or RAS with --ras. A trailing + includes (default), - excludes. "
        "Points are applied in the given order as successive clicks. Negative values may follow the option "
        "directly (--world-point -60,10,500) or with = (--world-point=-60,10,500). "
        "The default model is 'default' (the click-conditioned 3D U-Net shipped with fastsam3d).",
    )
    parser.add_argument("image", type=Path)
    parser.add_argument(
        "--point",
        dest="clicks",
        type=click("voxel"),
        action=AppendClick,
        metavar="I,J,K[,+|-]",
        help="a click at 0-based voxel index i,j,k (nibabel data[i, j, k]); repeatable",
    )
    parser.add_argument(
        "--world-point",
        dest="clicks",
        type=click("world"),
        action=AppendClick,
        metavar="X,Y,Z[,+|-]",
        help="a click at world millimetres (LPS, or RAS with --ras); repeatable",
    )
    parser.add_argument("--ras", action="store_true", help="world points are RAS instead of LPS")
    parser.add_argument(
        "--box",
        type=box,
        metavar="I0,J0,K0,I1,J1,K1",
        help="3D box given by two 0-based corner voxels, each index of the first <= the second's",
    )
    parser.add_argument("--out", type=Path, required=True, help="label map to write (.nii.gz, .nrrd, .mha)")
    parser.add_argument("--probability", type=Path, help="also write the foreground probability map")
    parser.add_argument("--uncertainty", type=Path, help="also write the uncertainty (entropy, bits) map")
    parser.add_argument("--samples", type=int, default=16, help="decoder runs for --uncertainty (default 16)")
    parser.add_argument("--timing", action="store_true", help="print the time of each stage")
    add_model_arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    import numpy as np

    from ..io import check_writable
    from ..session import Session

    if not args.clicks and args.box is None:
        raise FastSAM3DError("give at least one --point, --world-point or --box")
    if args.samples < 1:
        raise FastSAM3DError("--samples must be at least 1")
    for output in (args.out, args.probability, args.uncertainty):
        if output is not None:
            check_writable(output)
    from ..registry import spatial_dims

    if spatial_dims(args.model) == 2:
        _segment_slicewise(args)
        return
    model = load_model(args)
    session = Session(model, device=args.device)
    volume = session.set_image(args.image)
    session.add_object()
    steps, mask = _apply_prompts(session, args)
    written = [session.save_labels(args.out)]
    if args.probability:
        written.append(session.save_map(session.probability(), args.probability))
    if args.uncertainty:
        uncertainty = session.uncertainty(samples=args.samples)
        steps.append((f"uncertainty ({args.samples} samples)", session.timings))
        written.append(session.save_map(uncertainty.full("entropy", volume.shape), args.uncertainty))
    voxel_ml = float(np.prod(volume.spacing)) / 1000.0
    log.info(
        f"segmented {int(mask.sum())} voxels ({mask.sum() * voxel_ml:.1f} ml); wrote {', '.join(map(str, written))}"
    )
    if args.timing:
        log.info(f"  precision: {session.precision} (--precision {args.precision})")
        for name, timing in steps:
            log.info(
                f"  {name}: encoder {timing.encoder * 1e3:.0f} ms, decoder {timing.decoder * 1e3:.1f} ms, "
                f"paste {timing.paste * 1e3:.1f} ms"
            )


def _apply_prompts(session, args: argparse.Namespace) -> tuple[list, object]:
    """The box, then the clicks in order; returns (description, timings) per step and the mask.
    Refuses an empty result."""
    steps = []
    if args.box is not None:
        steps.append(("box", session.set_box(*args.box).timings))
    for kind, coords, positive in args.clicks or []:
        frame = "voxel" if kind == "voxel" else "ras" if args.ras else "lps"
        answer = session.add_click(coords, positive, frame=frame)
        steps.append((f"click {'+' if positive else '-'} {kind} {','.join(f'{c:g}' for c in coords)}", answer.timings))
    mask = session.mask()
    if not mask.any():
        raise FastSAM3DError("the model segmented nothing at these prompts (empty object); nothing written")
    return steps, mask


def _segment_slicewise(args: argparse.Namespace) -> None:
    """``segment`` with a 2D SAM: the box's middle slice, then propagation; clicks correct slices."""
    import numpy as np

    from ..slicewise import SliceSession

    session = SliceSession(args.model, checkpoint=args.checkpoint, device=args.device)
    volume = session.set_image(args.image)
    session.add_object()
    bar = _slice_progress(session, args.quiet)
    try:
        steps, mask = _apply_prompts(session, args)
    finally:
        if bar is not None:
            bar.close()
    written = [session.save_labels(args.out)]
    if args.probability or args.uncertainty:  # mean over jittered boxes on the cached slice embeddings
        uncertainty = session.uncertainty(samples=args.samples)
        steps.append((f"uncertainty ({args.samples} samples)", session.timings))
        for path, which in ((args.probability, "probability"), (args.uncertainty, "entropy")):
            if path:
                written.append(session.save_map(uncertainty.full(which, volume.shape), path))
    voxel_ml = float(np.prod(volume.spacing)) / 1000.0
    log.info(
        f"segmented {int(mask.sum())} voxels ({mask.sum() * voxel_ml:.1f} ml) on {int(mask.any(axis=tuple(a for a in range(3) if a != session.axis)).sum())} slices; wrote {', '.join(map(str, written))}"
    )
    if args.timing:
        for name, timing in steps:
            log.info(
                f"  {name}: {timing.slices} slices, encoder {timing.encoder * 1e3:.0f} ms, decoder {timing.decoder * 1e3:.0f} ms"
            )


def _slice_progress(session, quiet: bool):
    """A tqdm bar on stderr for slice propagation (shown once it lasts over a second), or None."""
    if quiet or not hasattr(session, "progress"):
        return None
    from tqdm import tqdm

    bar = tqdm(unit="slice", desc="propagating", file=sys.stderr, leave=False, delay=1.0)

    def update(progress) -> None:
        if progress.total is not None and bar.total != progress.total:
            bar.total = progress.total
        bar.n = progress.done
        bar.refresh()

    session.progress = update
    return bar
