"""Command line: ``fastsam3d segment | demo | evaluate | weights | data | models | info | serve | train ...``.
Parsing only; the work is in the API. Messages go through ``logging`` (``-q`` / ``-v``); progress bars
are tqdm on stderr."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from . import __version__
from .errors import FastSAM3DError

EXIT_USER_ERROR = 2
log = logging.getLogger("fastsam3d")


def _click(kind: str):
    """argparse type for ``a,b,c[,+|-]``: a click of ``kind`` ("voxel" or "world")."""

    def parse(text: str) -> tuple[str, tuple[float, float, float], bool]:
        parts = [p.strip() for p in text.split(",")]
        sign = "+"
        if parts and parts[-1] in ("+", "-"):
            sign = parts.pop()
        try:
            coords = tuple(float(p) for p in parts)
        except ValueError:
            coords = ()
        if len(coords) != 3:
            raise argparse.ArgumentTypeError(f"expected three numbers and an optional +/-, got {text!r}")
        return kind, coords, sign == "+"

    return parse


def _box(text: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    try:
        values = [float(p) for p in text.split(",")]
    except ValueError:
        values = []
    if len(values) != 6:
        raise argparse.ArgumentTypeError(f"a box is i0,j0,k0,i1,j1,k1 (six numbers), got {text!r}")
    return tuple(values[:3]), tuple(values[3:])


class _AppendClick(argparse.Action):
    """Collect --point and --world-point into one ordered list of clicks."""

    def __call__(self, parser, namespace, values, option_string=None):
        clicks = getattr(namespace, "clicks", None) or []
        clicks.append(values)
        namespace.clicks = clicks


def _add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="default", help="model name (see `fastsam3d models`) or checkpoint file")
    parser.add_argument("--checkpoint", help="weights for a named model, e.g. sam_med3d_turbo.pth")
    parser.add_argument("--decoder-checkpoint", help="prompt encoder + decoder for an encoder-only student checkpoint")
    parser.add_argument("--block-style", choices=("prenorm", "fastsam3d"), help="override the encoder block form")
    parser.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--precision", choices=("auto", "fp32", "bf16", "int8"), default="auto",
                        help="image encoder arithmetic: auto (default: int8 for the 3D SAMs on a CPU, else fp32), "
                        "fp32, bf16, int8 (CPU only)")


def _verbosity(parser: argparse.ArgumentParser, default) -> None:
    parser.add_argument("-q", "--quiet", action="store_true", default=default, help="only warnings and errors; no progress bars")
    parser.add_argument("-v", "--verbose", action="store_true", default=default, help="debug messages")


class _Parser(argparse.ArgumentParser):
    """Every subcommand takes -q / -v too (before or after its name)."""

    def add_subparsers(self, **kwargs):
        action = super().add_subparsers(**kwargs)
        add_parser = action.add_parser

        def add_with_verbosity(*args, **kw):
            sub = add_parser(*args, **kw)
            _verbosity(sub, argparse.SUPPRESS)
            return sub

        action.add_parser = add_with_verbosity
        return action


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="fastsam3d", description="Fast interactive 3D segmentation with 3D SAMs.")
    parser.add_argument("--version", action="version", version=f"fastsam3d {__version__}")
    _verbosity(parser, False)
    commands = parser.add_subparsers(dest="command", required=True)

    segment = commands.add_parser(
        "segment",
        help="segment one object from clicks",
        description="Voxel points are i,j,k in the image's own index order (ITK index = nibabel data[i, j, k]); "
        "world points are millimetres in LPS (ITK, Slicer), or RAS with --ras. A trailing + includes "
        "(default), - excludes. Points are applied in the given order as successive clicks.",
    )
    segment.add_argument("image", type=Path)
    segment.add_argument("--point", dest="clicks", type=_click("voxel"), action=_AppendClick, metavar="I,J,K[,+|-]")
    segment.add_argument("--world-point", dest="clicks", type=_click("world"), action=_AppendClick, metavar="X,Y,Z[,+|-]")
    segment.add_argument("--ras", action="store_true", help="world points are RAS instead of LPS")
    segment.add_argument("--box", type=_box, metavar="I0,J0,K0,I1,J1,K1", help="3D box given by two corner voxels")
    segment.add_argument("--out", type=Path, required=True, help="label map to write (.nii.gz, .nrrd, .mha)")
    segment.add_argument("--probability", type=Path, help="also write the foreground probability map")
    segment.add_argument("--uncertainty", type=Path, help="also write the uncertainty (entropy, bits) map")
    segment.add_argument("--samples", type=int, default=16, help="decoder runs for --uncertainty (default 16)")
    segment.add_argument("--timing", action="store_true", help="print the time of each stage")
    _add_model_arguments(segment)

    demo = commands.add_parser("demo", help="segment a sample volume with simulated clicks (the quick start)")
    demo.add_argument("--out", type=Path, default=Path("fastsam3d-demo"), help="output folder (default fastsam3d-demo)")
    demo.add_argument("--clicks", type=int, default=5, help="simulated clicks per structure (default 5)")
    _add_model_arguments(demo)

    evaluate = commands.add_parser(
        "evaluate",
        help="simulated interactive evaluation: Dice/NSD per click, timings, report",
        description="Runs every model on every structure of every case with simulated prompts and writes "
        "results.csv, summary.json, dice_per_click.png, time_per_click.png and report.md into --out. "
        "Exit status 1 when some case failed. Under torchrun the cases are sharded over the ranks.",
    )
    evaluate.add_argument("--data", required=True, type=Path, help="manifest/nnU-Net dataset.json, nnU-Net folder or FastSAM3D folder")
    evaluate.add_argument("--model", dest="models", action="append", required=True, metavar="NAME|PATH|NAME=CKPT",
                          help="model to evaluate (repeat for a comparison); 'random-walker' is the classical baseline")
    evaluate.add_argument("--protocol", default="center", choices=("fastsam3d", "center", "random", "box+5"))
    evaluate.add_argument("--clicks", type=int, help="interaction steps per structure (default 5; 6 for box+5)")
    evaluate.add_argument("--classes", help="comma-separated class names or ids (default: all present)")
    evaluate.add_argument("--cases", help="comma-separated case names to evaluate (default: all)")
    evaluate.add_argument("--out", type=Path, required=True, help="report folder")
    evaluate.add_argument("--workers", type=int, default=1, help="cases evaluated in parallel processes")
    evaluate.add_argument("--seed", type=int, default=2023)
    evaluate.add_argument("--nsd-tolerance", type=float, default=2.0, help="surface Dice tolerance in mm (default 2)")
    evaluate.add_argument("--hd95", action="store_true", help="also compute the 95th-percentile Hausdorff distance")
    evaluate.add_argument("--device", help="torch device (default: cuda if available, else cpu)")

    serve = commands.add_parser(
        "serve",
        help="REST server with the web viewer",
        description="Serves the API (OpenAPI docs at /docs) and the viewer at /. Binds to localhost unless --host is given.",
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to bind; other than loopback needs --api-key (or --insecure)")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--data", type=Path, help="folder whose volumes clients may open (nothing outside it is readable)")
    serve.add_argument("--api-key", help="require this key in the X-API-Key header (default: $FASTSAM3D_API_KEY)")
    serve.add_argument("--insecure", action="store_true", help="allow a non-loopback --host without an API key")
    serve.add_argument("--allowed-hosts", default="", help="comma-separated Host header names accepted besides "
                       "localhost, 127.0.0.1, ::1 and --host ('*': any)")
    serve.add_argument("--max-sessions", type=int, default=8)
    serve.add_argument("--cache-mb", type=float, default=256.0,
                       help="cached ROI features per session in MB (at most max-sessions x this in all; default 256)")
    serve.add_argument("--max-upload-mb", type=float, default=2048.0, help="volume and mask uploads")
    serve.add_argument("--max-unpacked-mb", type=float, default=2048.0, help="decoded image size, and unzipped DICOM size")
    serve.add_argument("--max-voxels", type=int, default=2**28, help="voxels of an opened image (checked from its header)")
    serve.add_argument("--max-zip-entries", type=int, default=5000, help="files in an uploaded DICOM zip")
    serve.add_argument("--max-points", type=int, default=100, help="points in one click request")
    serve.add_argument("--request-seconds", type=float, default=120.0, help="deadline of one request (waiting and working)")
    serve.add_argument("--idle-minutes", type=float, default=30.0, help="close sessions idle this long")
    serve.add_argument("--temp-dir", type=Path, help="temporary root (default: <system temp>/fastsam3d-server); "
                       "folders of dead servers under it are removed at start")
    serve.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"),
                       help="server log level; 'info' and 'debug' include the access log (default info)")
    serve.add_argument("--no-access-log", action="store_true", help="no line per request")
    _add_model_arguments(serve)

    train = commands.add_parser(
        "train",
        help="interactive training (from scratch, fine-tuning, or parameter-efficient); torchrun for DDP",
        description="SAM-Med3D-style interactive training: several click rounds per sample, clicks from the "
        "error region, previous logits fed back; synthetic domain-randomised crops, optionally mixed with a "
        "labelled dataset. Checkpoints with exact --resume, metrics.csv, validation Dice per click every epoch. "
        "Under `torchrun --nproc_per_node N` it trains with DDP.",
    )
    train.add_argument("--out", type=Path, required=True, help="run folder (checkpoint, metrics.csv, model.safetensors)")
    train.add_argument("--config", default="compact", help="architecture when training from scratch")
    train.add_argument("--init", help="start from this model name or checkpoint (fine-tuning)")
    train.add_argument("--data", help="labelled dataset mixed with synthetic crops: dataset.json manifest, nnU-Net or FastSAM3D folder")
    train.add_argument("--real-fraction", type=float, default=0.5, help="share of crops drawn from --data")
    train.add_argument("--holdout", default="", help="comma-separated case names of --data kept for validation")
    train.add_argument("--peft", default="none", help="none | lora | adapter | hyper, or a '+' combination (frozen encoder)")
    train.add_argument("--cluster-after", type=int, help="token clustering after this encoder block (0-based)")
    train.add_argument("--minutes", type=float, help="wall-time budget (summed over resumed runs)")
    train.add_argument("--steps", type=int, help="step budget (reproducible; the schedule follows it)")
    train.add_argument("--batch-size", type=int, default=2, help="per process")
    train.add_argument("--rounds", type=int, default=3, help="click rounds per sample")
    train.add_argument("--lr", type=float, default=4e-4)
    train.add_argument("--epoch-steps", type=int, default=250, help="validate every this many steps")
    train.add_argument("--workers", type=int, default=1, help="data loader processes")
    train.add_argument("--loss-size", type=int, default=64, help="loss on logits upsampled to this size (the crop size = SAM-Med3D)")
    train.add_argument("--device", help="cpu, cuda, cuda:1 (default: GPU if present)")
    train.add_argument("--no-amp", action="store_true", help="fp32 on GPU (default: bf16 autocast)")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--resume", action="store_true")

    labels = commands.add_parser(
        "prepare-labels",
        help="distillation step 1: run the teacher once over training crops and store its layer features",
    )
    labels.add_argument("teacher", help="teacher model name or checkpoint")
    labels.add_argument("--out", type=Path, required=True, help="folder for the prepared crops")
    labels.add_argument("--count", type=int, default=200, help="number of crops")
    labels.add_argument("--data", help="labelled dataset mixed with synthetic crops (as for train)")
    labels.add_argument("--real-fraction", type=float, default=0.5)
    labels.add_argument("--holdout", default="", help="case names of --data never used")
    labels.add_argument("--device")
    labels.add_argument("--seed", type=int, default=0)

    distill = commands.add_parser(
        "distill",
        help="distillation step 2: layer-wise progressive distillation of a student encoder (FastSAM3D)",
        description="Trains the student encoder layer by layer against the prepared teacher features, then "
        "writes student.safetensors (student encoder + teacher prompt encoder and decoder); fine-tune it end to "
        "end with `fastsam3d train --init OUT/student.safetensors`.",
    )
    distill.add_argument("--labels", type=Path, required=True, help="folder written by prepare-labels")
    distill.add_argument("--out", type=Path, required=True)
    distill.add_argument("--student", default="compact", help="student architecture (same width as the teacher)")
    distill.add_argument("--epochs", type=int, default=12)
    distill.add_argument("--layer-epochs", type=int, default=3, help="epochs before the next layer pair takes over")
    distill.add_argument("--layer-map", default="official", choices=("official", "uniform"))
    distill.add_argument("--lr", type=float, default=8e-4)
    distill.add_argument("--accumulation", type=int, default=10, help="gradient accumulation (batch 1)")
    distill.add_argument("--device")
    distill.add_argument("--seed", type=int, default=0)
    distill.add_argument("--resume", action="store_true")

    recipe = commands.add_parser(
        "train-default",
        help="reproduce the shipped default model: interactive training on synthesis from real label maps "
        "(resumable: run again to continue; ~1.5 h on 2 CPU cores)",
    )
    recipe.add_argument("--out", type=Path, default=Path("runs/default"))
    recipe.add_argument("--scale", type=float, default=1.0, help="multiply the step budget (longer runs on a GPU)")
    recipe.add_argument("--init", help="start from these weights, e.g. `default` to continue the shipped model")
    recipe.add_argument("--seed", type=int, default=0)
    recipe.add_argument("--minutes", type=float, help="a wall-time budget instead of the step budget (not bit-reproducible)")
    recipe.add_argument("--device")
    recipe.add_argument("--install", action="store_true", help="copy the result into the package as the default model")

    prepare = commands.add_parser("prepare", help="convert datasets for training")
    formats = prepare.add_subparsers(dest="format", required=True, metavar="FORMAT")
    nnunet = formats.add_parser(
        "nnunet",
        help="nnU-Net dataset -> FastSAM3D layout (one folder per class, binary masks, 1.5 mm)",
        description="Writes the training cases as DST/<class>/<modality>_<dataset>/imagesTr|labelsTr/<case>.nii.gz, "
        "as SAM-Med3D's prepare scripts: images resampled to --spacing (linear), binary masks onto the same grid "
        "(nearest), orientation and position kept; classes smaller than --min-volume in a case are skipped.",
    )
    nnunet.add_argument("source", type=Path, metavar="SRC", help="nnU-Net dataset folder (dataset.json, imagesTr, labelsTr)")
    nnunet.add_argument("target", type=Path, metavar="DST", help="output root; other datasets' folders there are kept")
    nnunet.add_argument("--spacing", type=float, default=1.5, help="mm")
    nnunet.add_argument("--min-volume", type=float, default=10.0, help="mm³ a class needs in a case, at the source spacing (official: 10)")
    nnunet.add_argument("--classes", help="comma-separated class names or ids (default: all)")
    nnunet.add_argument("--overwrite", action="store_true", help="replace this dataset's existing class folders")

    data = commands.add_parser("data", help="development data")
    data.add_argument("action", choices=("fetch",), help="fetch: download TotalSegmentator's test volumes with pip")
    data.add_argument("--root", type=Path, help="destination (default $FASTSAM3D_DATA or ~/.cache/fastsam3d)")

    weights = commands.add_parser(
        "weights",
        help="official checkpoints: list, fetch, path, verify",
        description="Official checkpoints by name, from where their publishers host them (Hugging Face hub, Google "
        "Drive, HTTPS), into the Hugging Face cache ($HF_HOME) or $FASTSAM3D_WEIGHTS (default ~/.cache/fastsam3d/"
        "weights). `--model NAME` downloads them on first use; HF_HUB_OFFLINE=1 forbids downloads.",
    )
    weights_actions = weights.add_subparsers(dest="action", required=True, metavar="ACTION")
    weights_actions.add_parser("list", help="name, what it is, licence, size, source, cached or not")
    fetch = weights_actions.add_parser("fetch", help="download (resumable) and record the sha256")
    fetch.add_argument("names", nargs="+", metavar="NAME")
    fetch.add_argument("--accept-licence", "--accept-license", action="store_true",
                       help="accept a non-open licence without asking (it is printed first)")
    path = weights_actions.add_parser("path", help="print the local file of a cached checkpoint")
    path.add_argument("name", metavar="NAME")
    verify = weights_actions.add_parser("verify", help="re-hash cached files against their recorded sha256")
    verify.add_argument("names", nargs="*", metavar="NAME")

    models = commands.add_parser("models", help="list model configs and whether their weights are present")
    models.set_defaults(clicks=None)
    info = commands.add_parser("info", help="print an image's shape, spacing and orientation")
    info.add_argument("image", type=Path)
    return parser


def _segment(args: argparse.Namespace) -> None:
    import numpy as np

    from .io import check_writable
    from .session import Session

    if not args.clicks and args.box is None:
        raise FastSAM3DError("give at least one --point, --world-point or --box")
    if args.samples < 1:
        raise FastSAM3DError("--samples must be at least 1")
    for output in (args.out, args.probability, args.uncertainty):
        if output is not None:
            check_writable(output)
    from .registry2d import is_2d_model

    if is_2d_model(args.model):
        _segment_slicewise(args)
        return
    model = _load_model(args)
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
    log.info(f"segmented {int(mask.sum())} voxels ({mask.sum() * voxel_ml:.1f} ml); wrote {', '.join(map(str, written))}")
    if args.timing:
        log.info(f"  precision: {session.precision} (--precision {args.precision})")
        for name, timing in steps:
            log.info(
                f"  {name}: encoder {timing.encoder * 1e3:.0f} ms, decoder {timing.decoder * 1e3:.1f} ms, "
                f"paste {timing.paste * 1e3:.1f} ms"
            )


def _evaluate(args: argparse.Namespace) -> int:
    from .extras import require_extra

    require_extra("eval", "monai", "skimage", "matplotlib", feature="fastsam3d evaluate")
    from .evaluation.evaluate import evaluate

    if args.workers < 1:
        raise FastSAM3DError("--workers must be at least 1")
    classes = [c for c in (args.classes or "").split(",") if c.strip()] or None
    cases = [c.strip() for c in (args.cases or "").split(",") if c.strip()] or None
    summary, failed = evaluate(
        args.data, args.models, args.out, protocol=args.protocol, steps=args.clicks, classes=classes, case_names=cases,
        workers=args.workers, seed=args.seed, nsd_tolerance=args.nsd_tolerance, hd95=args.hd95,
        device=args.device, progress=not args.quiet,
    )
    for model, values in summary.items():
        curve = ", ".join(f"{v:.3f}" for v in values["dice_per_step"])
        log.info(f"{model}: {values['structures']} structures, Dice per step [{curve}], "
                 f"clicks honoured {100 * values['clicks_honoured']:.1f} %, "
                 f"first step {values['first_step_ms']:.0f} ms, later {values['later_step_ms']:.0f} ms")
    if summary:
        log.info(f"report: {args.out / 'report.md'}")
    if failed:
        log.error(f"{failed} case(s) or structure(s) failed; see {args.out / 'results.csv'}")
        return 1
    return 0


def _apply_prompts(session, args: argparse.Namespace) -> tuple[list, object]:
    """The box, then the clicks in order; returns (description, timings) per step and the mask.
    Refuses an empty result."""
    steps = []
    if args.box is not None:
        session.set_box(*args.box)
        steps.append(("box", session.timings))
    for kind, coords, positive in args.clicks or []:
        session.add_click(coords, positive, world=kind == "world", ras=args.ras)
        steps.append((f"click {'+' if positive else '-'} {kind} {','.join(f'{c:g}' for c in coords)}", session.timings))
    mask = session.mask()
    if not mask.any():
        raise FastSAM3DError("the model segmented nothing at these prompts (empty object); nothing written")
    return steps, mask


def _segment_slicewise(args: argparse.Namespace) -> None:
    """``segment`` with a 2D SAM: the box's middle slice, then propagation; clicks correct slices."""
    import numpy as np

    from .slicewise import SliceSession

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
    log.info(f"segmented {int(mask.sum())} voxels ({mask.sum() * voxel_ml:.1f} ml) on {int(mask.any(axis=tuple(a for a in range(3) if a != session.axis)).sum())} slices; wrote {', '.join(map(str, written))}")
    if args.timing:
        for name, timing in steps:
            log.info(f"  {name}: {timing.slices} slices, encoder {timing.encoder * 1e3:.0f} ms, decoder {timing.decoder * 1e3:.0f} ms")


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


def _training(args: argparse.Namespace) -> None:
    from .extras import require_extra

    require_extra("train", "monai", feature=f"fastsam3d {args.command}")
    from .training.trainer import TrainSettings

    if args.command == "train-default":
        from .training.recipe import install_default, train_default

        path = train_default(args.out, args.scale, args.device, seed=args.seed, init=args.init, minutes=args.minutes)
        log.info(f"wrote {path}")
        if args.install:
            log.info(f"installed as the default model: {install_default(path)}")
        return
    if args.command == "distill":
        from .training.distill import distill

        path = distill(args.labels, args.out, args.student, args.epochs, args.layer_epochs, args.layer_map, args.lr,
                       accumulation=args.accumulation, seed=args.seed, resume=args.resume, device=args.device)
        if path:
            log.info(f"wrote {path}; fine-tune it with: fastsam3d train --init {path} --out RUN")
        return
    holdout = tuple(name.strip() for name in args.holdout.split(",") if name.strip())
    if args.data:
        from .evaluation.datasets import load_cases

        names = {case.name for case in load_cases(args.data)}
        if unknown := set(holdout) - names:
            raise FastSAM3DError(f"--holdout names unknown cases {sorted(unknown)}; cases: {', '.join(sorted(names))}")
    if not 0 <= args.real_fraction <= 1:
        raise FastSAM3DError("--real-fraction must lie in [0, 1]")
    if args.command == "prepare-labels":
        from .training.distill import prepare_labels

        settings = TrainSettings(data=args.data, real_fraction=args.real_fraction, holdout=holdout, device=args.device, seed=args.seed)
        log.info(f"wrote {prepare_labels(args.teacher, args.out, args.count, settings)}")
    else:
        from .modeling.peft import PEFT_METHODS
        from .training.trainer import train

        if any(m not in PEFT_METHODS for m in args.peft.split("+")):
            raise FastSAM3DError(f"--peft must be one of {', '.join(PEFT_METHODS)} or a '+' combination")
        if args.steps is None and args.minutes is None:
            args.minutes = 45.0
        settings = TrainSettings(
            config=args.config, init=args.init, data=args.data, real_fraction=args.real_fraction, holdout=holdout,
            minutes=args.minutes, max_steps=args.steps, batch_size=args.batch_size, rounds=args.rounds, lr=args.lr,
            seed=args.seed, epoch_steps=args.epoch_steps, workers=args.workers, peft=args.peft,
            cluster_after=args.cluster_after, loss_size=args.loss_size, device=args.device, amp=not args.no_amp,
            progress=not args.quiet,
        )
        path = train(args.out, settings, resume=args.resume)
        if path:
            log.info(f"wrote {path}")


def _prepare(args: argparse.Namespace) -> None:
    from .data.prepare import prepare_nnunet

    if args.spacing <= 0:
        raise FastSAM3DError("--spacing must be positive")
    if args.min_volume < 0:
        raise FastSAM3DError("--min-volume must not be negative")
    classes = [c.strip() for c in args.classes.split(",") if c.strip()] if args.classes else None
    summary = prepare_nnunet(args.source, args.target, args.spacing, args.min_volume, classes, args.overwrite)
    log.info(summary.report())


def _serve(args: argparse.Namespace) -> None:
    import ipaddress
    import os

    from .extras import require_extra

    require_extra("server", "fastapi", "uvicorn", "multipart", feature="fastsam3d serve")
    import uvicorn

    from .server.app import create_app
    from .server.store import LOOPBACK_HOSTS, ServerSettings

    if args.data is not None and not args.data.is_dir():
        raise FastSAM3DError(f"--data {args.data} is not a folder")
    api_key = args.api_key or os.environ.get("FASTSAM3D_API_KEY")
    try:
        loopback = args.host == "localhost" or ipaddress.ip_address(args.host).is_loopback
    except ValueError:
        loopback = False
    if not loopback and not api_key and not args.insecure:
        raise FastSAM3DError(f"--host {args.host} exposes the server beyond this machine: give --api-key "
                             "(or $FASTSAM3D_API_KEY), or --insecure to serve without one")
    extra_hosts = [h.strip() for h in args.allowed_hosts.split(",") if h.strip()]
    settings = ServerSettings(
        data_dir=args.data, model=args.model, checkpoint=args.checkpoint, device=args.device, api_key=api_key,
        allowed_hosts=(*LOOPBACK_HOSTS, args.host, *extra_hosts), max_sessions=args.max_sessions, cache_mb=args.cache_mb,
        max_upload_mb=args.max_upload_mb, max_unpacked_mb=args.max_unpacked_mb, max_voxels=args.max_voxels,
        max_zip_entries=args.max_zip_entries, max_points=args.max_points, request_seconds=args.request_seconds,
        idle_seconds=60 * args.idle_minutes, temp_dir=args.temp_dir, precision=args.precision,
    )
    app = create_app(settings)
    if app.state.store.temp.stale_removed:
        log.info(f"removed the temporary folders of {app.state.store.temp.stale_removed} server(s) that stopped uncleanly")
    if not loopback and not api_key:
        log.warning(f"serving on {args.host} without an API key (--insecure)")
    log.warning(f"fastsam3d viewer: http://{args.host}:{args.port}/  (API docs: /docs)")
    level = "warning" if args.quiet else args.log_level
    uvicorn.run(app, host=args.host, port=args.port, log_level=level, access_log=not args.no_access_log,
                timeout_graceful_shutdown=3)


def _load_model(args: argparse.Namespace):
    """The model of --model / --checkpoint; official names download on first use (progress unless -q)."""
    import os

    from .registry import load_model

    if args.quiet:
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    return load_model(args.model, args.checkpoint, args.decoder_checkpoint, args.block_style, device=device,
                      precision=args.precision)


def _weights(args: argparse.Namespace) -> int:
    from . import hub

    if args.action == "list":
        rows = hub.official_models()
        print(f"{'name':18s} {'dims':4s} {'cached':6s} {'size':9s} {'licence':28s} description / source")
        for row in rows:
            print(f"{row['name']:18s} {str(row['dims']) + 'D':4s} {'yes' if row['cached'] else 'no':6s} "
                  f"{row['size']:9s} {row['licence']:28s} {row['description']}\n{'':69s} {row['source']}")
        return 0
    if args.action == "path":
        path = hub.cached_path(hub.get(args.name).name)
        if path is None:
            raise FastSAM3DError(f"{args.name} is not downloaded: run `fastsam3d weights fetch {args.name}`")
        print(path)
        return 0
    if args.action == "fetch":
        for name in args.names:
            entry = hub.get(name)
            path = hub.fetch(name, accept_licence=args.accept_licence, progress=not args.quiet)
            log.info(f"{entry.name}: {path}")
        return 0
    failures = 0
    for name, status in hub.verify(args.names or None):
        failures += status.startswith("MISMATCH")
        print(f"{name:18s} {status}")
    if failures:
        log.error(f"{failures} file(s) changed since download: delete them and fetch again")
        return 1
    return 0


def _setup_logging(args: argparse.Namespace) -> None:
    """Info on stdout as plain lines, warnings and errors on stderr as `fastsam3d: warning: ...`."""

    class _Format(logging.Formatter):
        def format(self, record: logging.LogRecord) -> str:
            text = super().format(record)
            return text if record.levelno < logging.WARNING else f"fastsam3d: {record.levelname.lower()}: {text}"

    out = logging.StreamHandler(sys.stdout)
    out.addFilter(lambda record: record.levelno < logging.WARNING)
    err = logging.StreamHandler(sys.stderr)
    err.setLevel(logging.WARNING)
    for handler in (out, err):
        handler.setFormatter(_Format("%(message)s"))
    log.handlers[:] = [out, err]
    log.propagate = False
    log.setLevel(logging.WARNING if args.quiet else logging.DEBUG if args.verbose else logging.INFO)
    if args.verbose:
        logging.basicConfig(level=logging.DEBUG, format="%(name)s: %(message)s")


def _models() -> None:
    from .errors import CheckpointError
    from .registry import MODEL_CONFIGS, WEIGHTS_DIR
    from .registry2d import MODEL_2D_CONFIGS, litemedsam_weights

    print(f"{'name':20s} {'weights':12s} description")
    from .hub import cached_path, is_downloadable

    for name, config in MODEL_CONFIGS.items():
        if config.weights:
            present = "shipped" if (WEIGHTS_DIR / config.weights).is_file() else "MISSING"
        elif is_downloadable(name):
            present = "cached" if cached_path(name) else "downloadable"
        else:
            present = "--checkpoint"
        print(f"{name:20s} {present:12s} {config.description}")
    for name, config in MODEL_2D_CONFIGS.items():
        present = ("cached" if cached_path(name) else "downloadable") if is_downloadable(name) else "--checkpoint"
        if name == "litemedsam":
            try:
                litemedsam_weights()
                present = "installed"
            except CheckpointError:
                present = "pip package"
        print(f"{name:20s} {present:12s} {config.description}")


def _info(path: Path) -> None:
    import numpy as np

    from .io import read_volume

    volume = read_volume(path)
    array = volume.array
    print(f"file:        {path}")
    print(f"shape:       {' x '.join(map(str, volume.shape))} (i, j, k)  dtype {array.dtype}")
    print(f"spacing:     {', '.join(f'{s:.4g}' for s in volume.spacing)} mm")
    print(f"origin:      {', '.join(f'{o:.2f}' for o in volume.origin)} mm (LPS)")
    print(f"orientation: {volume.orientation}")
    print(f"direction:   {np.array2string(volume.direction, precision=4, suppress_small=True).replace(chr(10), '')}")
    print(f"intensity:   min {array.min():.4g}, max {array.max():.4g}, mean {array.mean():.4g}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging(args)
    try:
        if args.command == "segment":
            _segment(args)
        elif args.command == "demo":
            from .demo import run_demo
            from .io import check_folder

            check_folder(args.out)
            run_demo(_load_model(args), args.out, args.clicks, args.device)
        elif args.command == "evaluate":
            return _evaluate(args)
        elif args.command in ("train", "prepare-labels", "distill", "train-default"):
            _training(args)
        elif args.command == "prepare":
            _prepare(args)
        elif args.command == "serve":
            _serve(args)
        elif args.command == "data":
            from .data.devdata import fetch_dev_data

            log.info(f"development data: {fetch_dev_data(args.root / 'totalsegmentator' if args.root else None)}")
        elif args.command == "weights":
            return _weights(args)
        elif args.command == "models":
            _models()
        elif args.command == "info":
            _info(args.image)
    except FastSAM3DError as error:
        print(f"fastsam3d: error: {error}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("fastsam3d: interrupted", file=sys.stderr)
        return 130
    except OSError as error:  # a full disk, a read-only folder, ...: one line, not a traceback
        if error.strerror is None:
            raise
        print(f"fastsam3d: error: {error.strerror}: {error.filename or ''}".rstrip(": "), file=sys.stderr)
        return EXIT_USER_ERROR
    return 0


if __name__ == "__main__":
    sys.exit(main())
