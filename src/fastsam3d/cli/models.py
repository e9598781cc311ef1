"""``fastsam3d models``: the model configs and whether their weights are present."""

from __future__ import annotations

import argparse


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("models", help="list model configs and whether their weights are present")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    from ..errors import CheckpointError
    from ..hub import cached_path, is_downloadable
    from ..registry import MODEL_CONFIGS, WEIGHTS_DIR
    from ..registry2d import MODEL_2D_CONFIGS, litemedsam_weights

    print(f"{'name':20s} {'weights':12s} description")
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
