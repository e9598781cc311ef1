"""``fastsam3d models``: the model configs and whether their weights are present."""

from __future__ import annotations

import argparse


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("models", help="list model configs and whether their weights are present")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    from ..registry import listed_configs, weights_status

    print(f"{'name':20s} {'weights':12s} description")
    for config in listed_configs():
        print(f"{config.name:20s} {weights_status(config.name):12s} {config.description}")
