"""Argument pieces shared by the commands: click and box types, model options, verbosity, logging."""

from __future__ import annotations

import argparse
import logging
import re
import sys

from ..configs import PRECISION_CHOICES

COORDINATE_OPTIONS = ("--point", "--world-point", "--box")  # options whose value may start with a minus sign
_NUMBER_LIST = re.compile(r"-?(\d+\.?\d*|\.\d+)(e[-+]?\d+)?(,\s*[-+]?(\d+\.?\d*|\.\d+)(e[-+]?\d+)?)*(,\s*[-+])?", re.I)

DEFAULT_MODEL = "default"


def click(kind: str):
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


def box(text: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """argparse type for ``i0,j0,k0,i1,j1,k1``: two corner voxels, each of a's indices <= b's."""
    try:
        values = [float(p) for p in text.split(",")]
    except ValueError:
        values = []
    if len(values) != 6:
        raise argparse.ArgumentTypeError(f"a box is i0,j0,k0,i1,j1,k1 (six numbers), got {text!r}")
    for axis, (low, high) in enumerate(zip(values[:3], values[3:], strict=True)):
        if low > high:
            name = "ijk"[axis]
            raise argparse.ArgumentTypeError(
                f"reversed box corners on axis {name}: {name}0={low:g} > {name}1={high:g} "
                "(give the smaller index first on each axis)"
            )
    return tuple(values[:3]), tuple(values[3:])


def join_negative_values(argv: list[str]) -> list[str]:
    """``--point -60,10,5`` as ``--point=-60,10,5``: argparse would read ``-60,...`` as an option."""
    joined: list[str] = []
    index = 0
    while index < len(argv):
        token = argv[index]
        following = argv[index + 1] if index + 1 < len(argv) else None
        if token in COORDINATE_OPTIONS and following is not None and _NUMBER_LIST.fullmatch(following.strip()):
            joined.append(f"{token}={following}")
            index += 2
        else:
            joined.append(token)
            index += 1
    return joined


class AppendClick(argparse.Action):
    """Collect --point and --world-point into one ordered list of clicks."""

    def __call__(self, parser, namespace, values, option_string=None):
        clicks = getattr(namespace, "clicks", None) or []
        clicks.append(values)
        namespace.clicks = clicks


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help=f"model name (see `fastsam3d models`) or checkpoint file (default: {DEFAULT_MODEL!r}, the click-conditioned "
        "3D U-Net shipped with fastsam3d)",
    )
    parser.add_argument("--checkpoint", help="weights for a named model, e.g. sam_med3d_turbo.pth")
    parser.add_argument("--decoder-checkpoint", help="prompt encoder + decoder for an encoder-only student checkpoint")
    parser.add_argument("--block-style", choices=("prenorm", "fastsam3d"), help="override the encoder block form")
    parser.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    parser.add_argument(
        "--precision",
        choices=PRECISION_CHOICES,
        default="auto",
        help="image encoder arithmetic: auto (default: on a CPU the fastest that keeps the masks, measured once "
        "per machine and model; on a GPU fp32), fp32, bf16, int8 (CPU only), onnx-fp32 / onnx-int8 (ONNX Runtime), "
        "openvino-fp32 (OpenVINO; both CPU only, fastsam3d[fast])",
    )


def add_verbosity(parser: argparse.ArgumentParser, default) -> None:
    parser.add_argument(
        "-q", "--quiet", action="store_true", default=default, help="only warnings and errors; no progress bars"
    )
    parser.add_argument("-v", "--verbose", action="store_true", default=default, help="debug messages")


class Parser(argparse.ArgumentParser):
    """Every subcommand takes -q / -v too (before or after its name); a usage error is one line."""

    def error(self, message: str):
        self.exit(2, f"fastsam3d: error: {message} (see `{self.prog} --help`)\n")

    def add_subparsers(self, **kwargs):
        action = super().add_subparsers(**kwargs)
        add_parser = action.add_parser

        def add_with_verbosity(*args, **kw):
            sub = add_parser(*args, **kw)
            add_verbosity(sub, argparse.SUPPRESS)
            return sub

        action.add_parser = add_with_verbosity
        return action


def fetch_named_weights(args: argparse.Namespace) -> None:
    """The files of an official ``--model NAME`` (cache, else one download), before torch is imported:
    a missing file and no network fail in a second, not after the imports."""
    from .. import hub

    if args.checkpoint is None and hub.is_downloadable(args.model):
        hub.resolve_for_model(args.model, progress=not args.quiet)


def load_model(args: argparse.Namespace):
    """The model of --model / --checkpoint; official names download on first use (progress unless -q)."""
    import os

    from ..registry import load_model

    if args.quiet:
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    from ..runtime import default_device
    from ..stages import stage
    from .progress import MODEL_STAGE

    device = args.device or default_device()
    with stage(f"{MODEL_STAGE} {args.model}"):
        return load_model(
            args.model,
            args.checkpoint,
            args.decoder_checkpoint,
            args.block_style,
            device=device,
            precision=args.precision,
        )


def setup_logging(args: argparse.Namespace) -> None:
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
    log = logging.getLogger("fastsam3d")
    log.handlers[:] = [out, err]
    log.propagate = False
    log.setLevel(logging.WARNING if args.quiet else logging.DEBUG if args.verbose else logging.INFO)
    if args.verbose:
        logging.basicConfig(level=logging.DEBUG, format="%(name)s: %(message)s")
