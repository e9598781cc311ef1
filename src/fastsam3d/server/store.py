"""Server-side state: one interactive :class:`Session` per opened volume, with limits and expiry.

All sessions share one loaded model (its weights are read once); each keeps its own cached
embeddings. A session is locked while it works, so one client's clicks run in order while other
sessions run in parallel. Uploaded files are written to a private temporary folder that is removed
with the session.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
import time
import uuid
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import FastSAM3DError, VolumeError
from ..io import Volume, read_volume
from ..registry import load_model
from ..session import Session

VOLUME_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd", ".zip")


class SessionLimitError(FastSAM3DError):
    """Too many open sessions."""


class UnknownSessionError(FastSAM3DError):
    """No session with that id (never opened, closed or expired)."""


@dataclass
class ServerSettings:
    """What ``fastsam3d serve`` was started with."""

    data_dir: Path | None = None
    model: str = "default"
    checkpoint: str | None = None
    device: str | None = None
    api_key: str | None = None
    max_sessions: int = 8
    max_upload_mb: float = 2048.0
    max_unzipped_mb: float = 4096.0
    idle_seconds: float = 1800.0


@dataclass
class ServerSession:
    id: str
    name: str
    session: Session
    folder: Path  # private temporary folder (upload, exports; removed on close)
    dicom_dir: Path | None  # the DICOM series the volume came from, for DICOM-SEG export
    lock: threading.Lock = field(default_factory=threading.Lock)
    last_used: float = field(default_factory=time.monotonic)


class SessionStore:
    """Open, find, expire and close sessions."""

    def __init__(self, settings: ServerSettings, model: torch.nn.Module | None = None) -> None:
        self.settings = settings
        self.device = torch.device(settings.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = model if model is not None else load_model(settings.model, settings.checkpoint).to(self.device)
        self._models: dict[str, torch.nn.Module] = {settings.model: self.model}  # loaded on first use, kept
        self._sessions: dict[str, ServerSession] = {}
        self._lock = threading.Lock()

    def available_models(self) -> list[str]:
        """The server's model and every registered 3D model whose weights ship with fastsam3d."""
        from ..registry import MODEL_CONFIGS, WEIGHTS_DIR

        shipped = [name for name, c in MODEL_CONFIGS.items() if c.weights and (WEIGHTS_DIR / c.weights).is_file()]
        return list(dict.fromkeys([self.settings.model, *self._models, *shipped]))

    def model_for(self, name: str | None) -> torch.nn.Module:
        """A model by name (one of :meth:`available_models`), loaded once and shared by all sessions."""
        name = name or self.settings.model
        if name not in self.available_models():
            raise FastSAM3DError(f"model {name!r} is not offered by this server; choose from {', '.join(self.available_models())}")
        with self._lock:
            if name not in self._models:
                self._models[name] = load_model(name).to(self.device)
        return self._models[name]

    def __len__(self) -> int:
        return len(self._sessions)

    def data_files(self) -> list[str]:
        """Volumes under the data folder (relative paths; DICOM folders end with ``/``)."""
        root = self._data_root()
        found = []
        for path in sorted(root.rglob("*")):
            relative = path.relative_to(root).as_posix()
            if path.is_file() and relative.lower().endswith(VOLUME_SUFFIXES):
                found.append(relative)
            elif path.is_dir() and _holds_dicom(path):
                found.append(relative + "/")
        return found

    def resolve_data_path(self, relative: str) -> Path:
        """A path inside the data folder; anything that escapes it is refused."""
        root = self._data_root()
        path = (root / relative).resolve()
        if not path.is_relative_to(root) or not path.exists():
            raise VolumeError(f"no volume {relative!r} in the data folder")
        return path

    def _data_root(self) -> Path:
        if self.settings.data_dir is None:
            raise FastSAM3DError("the server was started without --data: only uploads are possible")
        return Path(self.settings.data_dir).resolve()

    def open_path(self, relative: str, model: str | None = None) -> ServerSession:
        network = self.model_for(model)
        path = self.resolve_data_path(relative)
        volume = read_volume(path)
        dicom_dir = path if path.is_dir() else None
        return self._add(volume, relative, folder=None, dicom_dir=dicom_dir, model=network)

    def open_upload(self, folder: Path, filename: str, model: str | None = None) -> ServerSession:
        """A session from an upload already saved as ``folder/filename`` (a volume or a zipped DICOM series)."""
        try:
            network = self.model_for(model)
            path = folder / filename
            dicom_dir = None
            if filename.lower().endswith(".zip"):
                dicom_dir = folder / "dicom"
                _safe_unzip(path, dicom_dir, self.settings.max_unzipped_mb)
                path = _single_series(dicom_dir)
                dicom_dir = path
            volume = read_volume(path)
            return self._add(volume, filename, folder=folder, dicom_dir=dicom_dir, model=network)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise

    def _add(self, volume: Volume, name: str, folder: Path | None, dicom_dir: Path | None, model: torch.nn.Module) -> ServerSession:
        self.expire()
        with self._lock:
            if len(self._sessions) >= self.settings.max_sessions:
                raise SessionLimitError(f"{len(self._sessions)} sessions are open (the limit); close one first")
            session = Session(model, device=self.device)
            session.set_image(volume)
            entry = ServerSession(uuid.uuid4().hex, name, session, folder or new_upload_folder(), dicom_dir)
            self._sessions[entry.id] = entry
        return entry

    def get(self, session_id: str) -> ServerSession:
        self.expire()
        entry = self._sessions.get(session_id)
        if entry is None:
            raise UnknownSessionError(f"no session {session_id!r} (closed, expired or never opened)")
        entry.last_used = time.monotonic()
        return entry

    def close(self, session_id: str) -> None:
        with self._lock:
            entry = self._sessions.pop(session_id, None)
        if entry is None:
            raise UnknownSessionError(f"no session {session_id!r} (closed, expired or never opened)")
        _release(entry)

    def expire(self) -> None:
        """Close sessions idle for longer than ``idle_seconds``."""
        limit = time.monotonic() - self.settings.idle_seconds
        with self._lock:
            stale = [key for key, entry in self._sessions.items() if entry.last_used < limit and not entry.lock.locked()]
            entries = [self._sessions.pop(key) for key in stale]
        for entry in entries:
            _release(entry)

    def close_all(self) -> None:
        with self._lock:
            entries = list(self._sessions.values())
            self._sessions.clear()
        for entry in entries:
            _release(entry)


def new_upload_folder() -> Path:
    """A private temporary folder for one session's files."""
    return Path(tempfile.mkdtemp(prefix="fastsam3d-session-"))


def _release(entry: ServerSession) -> None:
    shutil.rmtree(entry.folder, ignore_errors=True)


def _holds_dicom(folder: Path) -> bool:
    """Whether a folder's first files are DICOM (the ``DICM`` marker after the 128-byte preamble)."""
    files = [p for p in sorted(folder.iterdir())[:20] if p.is_file()][:3]
    for file in files:
        try:
            with open(file, "rb") as handle:
                if handle.read(132)[128:] == b"DICM":
                    return True
        except OSError:
            continue
    return False


def _safe_unzip(archive: Path, target: Path, max_mb: float) -> None:
    """Extract a zip, refusing members that escape ``target`` and archives that inflate past ``max_mb``."""
    try:
        with zipfile.ZipFile(archive) as handle:
            members = [m for m in handle.infolist() if not m.is_dir()]
            if sum(m.file_size for m in members) > max_mb * 2**20:
                raise VolumeError(f"the zip file unpacks to more than {max_mb:.0f} MB")
            target.mkdir(parents=True, exist_ok=True)
            root = target.resolve()
            for member in members:
                destination = (target / member.filename).resolve()
                if not destination.is_relative_to(root):
                    raise VolumeError(f"the zip file has a member outside its folder: {member.filename!r}")
                destination.parent.mkdir(parents=True, exist_ok=True)
                with handle.open(member) as source, open(destination, "wb") as sink:
                    shutil.copyfileobj(source, sink)
    except zipfile.BadZipFile as error:
        raise VolumeError(f"not a valid zip file: {error}") from None


def _single_series(folder: Path) -> Path:
    """The folder holding the DICOM files of an unzipped archive (the deepest one with files)."""
    candidates = sorted({p.parent for p in folder.rglob("*") if p.is_file()}, key=lambda p: len(p.parts))
    if not candidates:
        raise VolumeError("the zip file holds no files")
    return max(candidates, key=lambda p: sum(1 for f in p.iterdir() if f.is_file()))
