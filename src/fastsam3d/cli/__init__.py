"""Command line: ``fastsam3d segment | demo | evaluate | serve | train ... | weights | models | info | export ...``.

One module per command, each with ``add_parser(subparsers)`` and a ``run(args)`` the parser points
to. Parsing only; the work is in the API. Messages go through ``logging`` (``-q`` / ``-v``); progress
bars are tqdm on stderr.
"""

from __future__ import annotations

import argparse
import sys

from .. import __version__
from ..errors import FastSAM3DError
from . import check_reference, data, demo, evaluate, export, info, models, prepare, segment, serve, train, weights
from .arguments import Parser, add_verbosity, fetch_named_weights, join_negative_values, setup_logging

EXIT_USER_ERROR = 2
FETCH_FIRST = ("segment", "demo")  # commands that load their model at once: its weights are fetched first
COMMANDS = (segment, demo, evaluate, serve, train, prepare, data, weights, models, info, check_reference, export)


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
    try:
        if args.command in FETCH_FIRST:
            fetch_named_weights(args)
        return args.func(args) or 0
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
