"""``fastsam3d segment``: named objects from clicks, boxes, scribbles, lassos and masks, written as a
label map, DICOM-SEG and statistics; on a folder of images, the same prompts for each (docs/cli.md)."""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import FastSAM3DError, PromptError
from ..io import Volume
from ..prompt_file import ObjectPrompts, Prompt, apply_prompts, locate, read_prompt_file
from .arguments import AppendClick, add_model_arguments, box, click, load_model

log = logging.getLogger(__name__)


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "segment",
        help="segment named objects from prompts (one image or a folder)",
        description="Voxel indices (--point, --box) are 0-based i,j,k in the image's own index order, as stored in "
        "the file: i,j,k indexes nibabel's data[i, j, k] (ITK/SimpleITK index (i, j, k), numpy array of "
        "sitk.GetArrayFromImage [k, j, i]); `fastsam3d info` prints the shape in this order. World points are "
        "millimetres in LPS (ITK, Slicer), or RAS with --ras. A trailing + includes (default), - excludes. "
        "Points are applied in the given order as successive clicks. Negative values may follow the option "
        "directly (--world-point -60,10,500) or with = (--world-point=-60,10,500). Several objects, scribbles "
        "and lassos come from a prompt file (--prompts, see docs/cli.md). "
        "The default model is 'default' (the click-conditioned 3D U-Net shipped with fastsam3d).",
    )
    parser.add_argument("image", type=Path, help="an image, a DICOM series folder, or a folder of images (batch)")
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
    parser.add_argument("--name", default="object 1", help="the object's name with --point/--box (DICOM-SEG, stats)")
    parser.add_argument("--label", type=int, default=1, help="the object's label value with --point/--box")
    parser.add_argument("--prompts", type=Path, metavar="FILE", help="JSON prompt file: named objects and prompts")
    parser.add_argument(
        "--initial-mask",
        type=Path,
        metavar="FILE",
        help="mask or label map on the image grid: each object starts from the voxels of its label value "
        "(with --point/--box: every non-zero voxel)",
    )
    parser.add_argument(
        "--out",
        "--output",
        dest="out",
        type=Path,
        help="label map to write (.nii.gz, .nrrd, .mha; .dcm: DICOM-SEG); a folder for a folder of images",
    )
    parser.add_argument("--dicom-seg", type=Path, metavar="OUT.dcm", help="also write DICOM-SEG (DICOM input only)")
    parser.add_argument("--stats", type=Path, metavar="FILE", help="per-object statistics (.json or .csv)")
    parser.add_argument("--probability", type=Path, help="also write the foreground probability map")
    parser.add_argument("--uncertainty", type=Path, help="also write the uncertainty (entropy, bits) map")
    parser.add_argument("--samples", type=int, default=16, help="decoder runs for --uncertainty (default 16)")
    parser.add_argument("--timing", action="store_true", help="print the time of each stage")
    add_model_arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..io import holds_dicom

    objects = _objects(args)
    if args.samples < 1:
        raise FastSAM3DError("--samples must be at least 1")
    if args.out is not None and args.out.name.lower().endswith(".dcm"):
        if args.dicom_seg is not None:
            raise FastSAM3DError("give either --out ending .dcm or --dicom-seg, not both")
        args.out, args.dicom_seg = None, args.out
    if args.image.is_dir() and not holds_dicom(args.image):
        from .segment_batch import run_batch

        return run_batch(args, objects)
    if args.out is None and args.dicom_seg is None:
        raise FastSAM3DError("give --out (a label map) and/or --dicom-seg")
    _check_outputs(args)
    if len(objects) > 1 and (args.probability or args.uncertainty):
        raise FastSAM3DError("--probability and --uncertainty need a single object")
    job = prepare(args.image, objects, args)
    rows = segment(open_session(args), job, args, args.out)
    if args.stats is not None:
        from ..statistics import write_stats

        log.info(f"wrote {write_stats(rows, args.stats)}")
    return 0


def _objects(args: argparse.Namespace) -> tuple[ObjectPrompts, ...]:
    """The objects of --prompts, or the one object of --point / --world-point / --box (box first)."""
    if args.prompts is not None:
        if args.clicks or args.box is not None:
            raise FastSAM3DError("give either --prompts or --point/--world-point/--box, not both")
        return read_prompt_file(args.prompts).objects
    if not args.clicks and args.box is None and args.initial_mask is None:
        raise FastSAM3DError("give at least one --point, --world-point or --box (or --prompts)")
    if not 1 <= args.label <= 65535:
        raise FastSAM3DError(f"--label must be from 1 to 65535, got {args.label}")
    prompts = [] if args.box is None else [Prompt("box", np.array(args.box, dtype=float))]
    for kind, coords, positive in args.clicks or []:
        frame = "voxel" if kind == "voxel" else "ras" if args.ras else "lps"
        prompts.append(Prompt("click", np.array([coords], dtype=float), positive, frame))
    return (ObjectPrompts(args.name, args.label, tuple(prompts)),)


def _check_outputs(args: argparse.Namespace) -> None:
    from ..io import check_folder, check_writable
    from ..statistics import check_stats_path

    for output in (args.out, args.probability, args.uncertainty):
        if output is not None:
            check_writable(output)
    if args.dicom_seg is not None:
        if not args.dicom_seg.name.lower().endswith(".dcm"):
            raise FastSAM3DError(f"--dicom-seg {args.dicom_seg}: the file name must end in .dcm")
        check_folder(args.dicom_seg.parent)
    if args.stats is not None:
        check_stats_path(args.stats)


def open_session(args: argparse.Namespace):
    """The engine for --model (:func:`fastsam3d.engine.open_session`): a 3D model loaded with the
    CLI's checkpoint and precision options, a 2D SAM by name."""
    from ..engine import open_session as engine_for
    from ..registry import spatial_dims

    if spatial_dims(args.model) == 2:
        return engine_for(args.model, checkpoint=args.checkpoint, device=args.device, precision=args.precision)
    return engine_for(load_model(args), checkpoint=args.checkpoint, device=args.device)


@dataclass(frozen=True)
class Job:
    """One image checked and ready: its volume, the objects with voxel prompts, initial masks by
    label value, and the DICOM series folder for DICOM-SEG (or None)."""

    image: Path
    volume: Volume
    objects: tuple[ObjectPrompts, ...]
    masks: dict[int, np.ndarray]
    dicom_dir: Path | None


def prepare(image: Path, objects: tuple[ObjectPrompts, ...], args: argparse.Namespace) -> Job:
    """Read the image and check every prompt and mask against it (before any model runs)."""
    from ..io import read_volume

    volume = read_volume(image)
    located = locate(objects, volume)
    masks = _initial_masks(args.initial_mask, volume, located) if args.initial_mask else {}
    for obj in located:
        if not obj.prompts and obj.label not in masks:
            raise PromptError(f"object {obj.name!r} has no prompts and no voxels in the initial mask")
    dicom_dir = _dicom_source(image) if args.dicom_seg else None
    return Job(image, volume, located, masks, dicom_dir)


def segment(session, job: Job, args: argparse.Namespace, out: Path | None) -> list:
    """Run the job's objects and write the label map ``out`` and the other outputs of ``args``;
    returns the statistics rows (:class:`~fastsam3d.statistics.ObjectStats`)."""
    from ..statistics import object_stats

    session.set_image(job.volume)
    bar = _slice_progress(session, args.quiet)
    try:
        labels, steps = _run_objects(session, job.objects, job.masks)
    finally:
        if bar is not None:
            bar.close()
    names = {obj.label: obj.name for obj in job.objects}
    written = _write_outputs(session, job, labels, names, steps, args, out)
    rows = object_stats(job.volume, labels, names, image=str(job.image))
    for row in rows:
        log.info(f"{row.name} (label {row.label}): segmented {row.voxels} voxels ({row.volume_ml:.1f} ml)")
    if written:
        log.info(f"wrote {', '.join(map(str, written))}")
    if args.timing:
        _log_timings(session, steps, args)
    return rows


def _initial_masks(path: Path, volume, objects: tuple[ObjectPrompts, ...]) -> dict[int, np.ndarray]:
    """Each object's starting voxels in the --initial-mask file (any non-zero voxel for a single
    object when the file holds no voxel of its label)."""
    from ..io import align_label, read_volume

    values = align_label(volume, read_volume(path), "the image", path).array
    masks = {obj.label: values == obj.label for obj in objects if (values == obj.label).any()}
    if len(objects) == 1 and not masks and values.any():
        masks = {objects[0].label: values != 0}
    if not masks:
        raise PromptError(f"the initial mask {path} holds no voxel of the objects' labels")
    return masks


def _dicom_source(image: Path) -> Path:
    from ..io import holds_dicom

    folder = image if image.is_dir() else image.parent
    if not holds_dicom(folder):
        raise FastSAM3DError(f"DICOM-SEG needs a DICOM series as input; {image} is not one")
    return folder


def _run_objects(session, objects: tuple[ObjectPrompts, ...], masks: dict[int, np.ndarray]):
    """Each object in turn (its initial mask, then its prompts); the label map with the objects'
    own label values (a later object wins where two overlap) and the (description, answer) steps."""
    steps = []
    lookup = {}
    for obj in objects:
        label = session.add_object(obj.name)
        lookup[label] = obj.label
        if obj.label in masks:
            steps.append((f"{obj.name}: initial mask", session.set_mask(masks[obj.label], label=label).timings))
        steps += [(name, answer.timings) for name, answer in apply_prompts(session, obj, label)]
        if not session.mask(label).any():
            raise FastSAM3DError(
                f"the model segmented nothing for {obj.name!r} at these prompts (empty object); nothing written"
            )
    table = np.zeros(max(lookup) + 1, dtype=np.uint8 if max(lookup.values()) < 256 else np.uint16)
    for label, value in lookup.items():
        table[label] = value
    return table[session.label_map()], steps


def _write_outputs(session, job: Job, labels, names, steps, args, out: Path | None) -> list[Path]:
    from ..io import write_volume

    written = []
    if out is not None:
        written.append(write_volume(job.volume.with_array(labels), out))
    if args.dicom_seg is not None:
        from ..server.dicom_seg import write_dicom_seg

        written.append(write_dicom_seg(labels, job.volume, job.dicom_dir, names, args.dicom_seg))
    sliced = not hasattr(session, "probability")  # a 2D SAM's probability is the mean over jittered boxes
    if args.probability and not sliced:
        written.append(session.save_map(session.probability(), args.probability))
    if args.uncertainty or (args.probability and sliced):
        uncertainty = session.uncertainty(samples=args.samples)
        steps.append((f"uncertainty ({args.samples} samples)", session.timings))
        for path, which in ((args.probability if sliced else None, "probability"), (args.uncertainty, "entropy")):
            if path:
                written.append(session.save_map(uncertainty.full(which, job.volume.shape), path))
    return written


def _log_timings(session, steps, args: argparse.Namespace) -> None:
    if hasattr(session, "precision"):
        log.info(f"  precision: {session.precision} (--precision {args.precision})")
    for name, timing in steps:
        if timing.slices:
            log.info(
                f"  {name}: {timing.slices} slices, encoder {timing.encoder * 1e3:.0f} ms, decoder {timing.decoder * 1e3:.0f} ms"
            )
        else:
            log.info(
                f"  {name}: encoder {timing.encoder * 1e3:.0f} ms, decoder {timing.decoder * 1e3:.1f} ms, "
                f"paste {timing.paste * 1e3:.1f} ms"
            )


def _slice_progress(session, quiet: bool):
    """A tqdm bar on stderr for slice propagation (shown once it lasts over a second), or None."""
    if quiet or session.dims != 2:
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
