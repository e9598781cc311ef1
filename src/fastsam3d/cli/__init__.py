"""Command line: ``fastsam3d segment | demo | evaluate | serve | train ... | weights | models | precision | info |
export ...``.

One module per command, each with ``add_parser(subparsers)`` and a ``run(args)`` the parser points
to. Parsing only; the work is in the API. Messages go through ``logging`` (``-q`` / ``-v``); progress
bars are tqdm on stderr.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from importlib import import_module

from .. import __version__
from ..errors import FastSAM3DError
from ..stages import add_listener, stage
from . import (
    check_reference,
    data,
    demo,
    evaluate,
    export,
    info,
    models,
    precision,
    prepare,
    segment,
    serve,
    train,
    weights,
)
from .arguments import Parser, add_verbosity, fetch_named_weights, join_negative_values, setup_logging

log = logging.getLogger(__name__)
EXIT_USER_ERROR = 2
FETCH_FIRST = ("segment", "demo")  # commands that load their model at once: weights first, then torch
COMMANDS = (
    segment,
    demo,
    evaluate,
    serve,
    train,
    prepare,
    data,
    weights,
    models,
    precision,
    info,
    check_reference,
    export,
)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="fastsam3d", description="Fast interactive 3D segmentation with 3D SAMs.")
    parser.add_argument("--version", action="version", version=f"fastsam3d {__version__}")
    add_verbosity(parser, False)
    subparsers = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(join_negative_values(sys.argv[1:] if argv is None else list(argv)))
    setup_logging(args)
    stop_watching, report_timing = _watch_stages(args)
    try:
        if args.command in FETCH_FIRST:
            fetch_named_weights(args)
            with stage("starting (importing torch)"):  # seconds of silence otherwise
                import_module("fastsam3d.engine.session3d")
        code = args.func(args) or 0
        report_timing()
        return code
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
    finally:
        stop_watching()


def _watch_stages(args: argparse.Namespace) -> tuple[Callable[[], None], Callable[[], None]]:
    """A status line for long stages (unless -q) and, with --timing, their wall times: returns the
    functions that stop watching and that log the times."""
    from .progress import StageTimes, StatusLine

    removers = []
    if not args.quiet:
        status = StatusLine()
        removers += [add_listener(status), status.close]
    times = StageTimes()
    timing = getattr(args, "timing", False)
    if timing:
        removers.append(add_listener(times))

    def report() -> None:
        if timing:
            log.info("timing (wall clock):")
            for line in times.report():
                log.info(line)

    return lambda: [remove() for remove in removers], report
