"""sha256 records of downloaded checkpoints (``weights_dir()/checksums.json``, trust on first use),
the check of a file against its record, ``verify``, and the licences the user accepted."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from ..errors import CheckpointError
from .catalogue import CATALOGUE, OfficialWeights, get, is_downloadable
from .local import cached_path, weights_dir


def _checksum_file() -> Path:
    return weights_dir() / "checksums.json"


def read_checksums() -> dict:
    try:
        return json.loads(_checksum_file().read_text())
    except (OSError, ValueError):
        return {}


def write_checksums(data: dict) -> None:
    from ..io import atomic_output

    with atomic_output(_checksum_file()) as temp:
        temp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def record(entry: OfficialWeights, path: Path, expected: str | None = None) -> str:
    """Hash a fresh download; refuse it when it differs from ``expected`` (the hub's ETag)."""
    digest = sha256(path)
    if expected and digest != expected:
        _remove(path)
        raise CheckpointError(
            f"{entry.name}: the downloaded {entry.filename} has sha256 {digest[:12]}…, the server announced "
            f"{expected[:12]}…; the download was removed: run `fastsam3d weights fetch {entry.name}` again"
        )
    data = read_checksums()
    stat = path.stat()
    data.setdefault("files", {})[entry.name] = {
        "sha256": digest,
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        "path": str(path),
        "source": entry.source,
    }
    write_checksums(data)
    return digest


def _remove(path: Path) -> None:
    target = path.resolve()
    path.unlink(missing_ok=True)
    if target != path:
        target.unlink(missing_ok=True)


def check(name: str, path: Path, full: bool = False) -> str:
    """Compare ``path`` with its recorded sha256 (re-hashed when its size or time changed, or ``full``);
    records it when there is no record yet. Returns "ok", "recorded" or raises CheckpointError."""
    entry = get(name)
    record = read_checksums().get("files", {}).get(name)
    if record is None or record.get("path") != str(path):
        record(entry, path)
        return "recorded"
    stat = path.stat()
    if not full and stat.st_size == record["size"] and stat.st_mtime_ns == record["mtime_ns"]:
        return "ok"
    digest = sha256(path)
    if digest != record["sha256"]:
        raise CheckpointError(
            f"{name}: {path} has changed since it was downloaded (sha256 {digest[:12]}…, recorded "
            f"{record['sha256'][:12]}…): delete it and run `fastsam3d weights fetch {name}`"
        )
    if stat.st_mtime_ns != record["mtime_ns"]:
        record(entry, path)
    return "ok"


def verify(names: list[str] | None = None) -> list[tuple[str, str]]:
    """Re-hash every cached downloadable file against its record: (name, "ok" | "recorded" | problem)."""
    results = []
    for name in names or [n for n in CATALOGUE if is_downloadable(n)]:
        path = cached_path(name)
        if path is None:
            results.append((name, "not downloaded"))
        elif not path.is_file():
            results.append((name, "folder (not hashed)"))
        else:
            try:
                results.append((name, check(name, path, full=True)))
            except CheckpointError as error:
                results.append((name, f"MISMATCH: {error}"))
    return results
