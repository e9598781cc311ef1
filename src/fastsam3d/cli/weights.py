"""``fastsam3d weights list | fetch | path | verify``: official checkpoints by name."""

from __future__ import annotations

import argparse
import logging

from ..errors import FastSAM3DError

log = logging.getLogger(__name__)


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "weights",
        help="official checkpoints: list, fetch, path, verify",
        description="Official checkpoints by name, from where their publishers host them (Hugging Face hub, Google "
        "Drive, HTTPS), into the Hugging Face cache ($HF_HOME) or $FASTSAM3D_WEIGHTS (default ~/.cache/fastsam3d/"
        "weights). `--model NAME` downloads them on first use; HF_HUB_OFFLINE=1 forbids downloads.",
    )
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    actions.add_parser("list", help="name, what it is, licence, size, source, cached or not").set_defaults(
        func=list_weights
    )
    fetch = actions.add_parser("fetch", help="download (resumable) and record the sha256")
    fetch.add_argument("names", nargs="+", metavar="NAME")
    fetch.add_argument(
        "--accept-licence",
        "--accept-license",
        action="store_true",
        help="accept a non-open licence without asking (it is printed first)",
    )
    fetch.set_defaults(func=fetch_weights)
    path = actions.add_parser("path", help="print the local file of a cached checkpoint")
    path.add_argument("name", metavar="NAME")
    path.set_defaults(func=print_path)
    verify = actions.add_parser("verify", help="re-hash cached files against their recorded sha256")
    verify.add_argument("names", nargs="*", metavar="NAME")
    verify.set_defaults(func=verify_weights)


def list_weights(args: argparse.Namespace) -> None:
    from ..hub import official_models

    print(f"{'name':18s} {'dims':4s} {'cached':6s} {'size':9s} {'licence':28s} description / source")
    for row in official_models():
        print(
            f"{row['name']:18s} {str(row['dims']) + 'D':4s} {'yes' if row['cached'] else 'no':6s} "
            f"{row['size']:9s} {row['licence']:28s} {row['description']}\n{'':69s} {row['source']}"
        )


def fetch_weights(args: argparse.Namespace) -> None:
    from .. import hub

    for name in args.names:
        entry = hub.get(name)
        path = hub.fetch(name, accept_licence=args.accept_licence, progress=not args.quiet)
        log.info(f"{entry.name}: {path}")


def print_path(args: argparse.Namespace) -> None:
    from .. import hub

    path = hub.cached_path(hub.get(args.name).name)
    if path is None:
        raise FastSAM3DError(f"{args.name} is not downloaded: run `fastsam3d weights fetch {args.name}`")
    print(path)


def verify_weights(args: argparse.Namespace) -> int:
    from ..hub import verify

    failures = 0
    for name, status in verify(args.names or None):
        failures += status.startswith("MISMATCH")
        print(f"{name:18s} {status}")
    if failures:
        log.error(f"{failures} file(s) changed since download: delete them and fetch again")
        return 1
    return 0
