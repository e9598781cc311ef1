"""Server-side state: one interactive :class:`Session` per opened volume, with limits and expiry.

All sessions share one loaded model (its weights are read once); each keeps its own cached
embeddings. A session runs one piece of work at a time (see :mod:`.worker`), so one client's
clicks run in order while other sessions run in parallel. Every file a session writes lives in a
private folder under this server's temporary folder, removed with the session; the folders of
servers that died are removed when the next server starts. With a state folder every change is
also saved (:mod:`.state`), and a saved session is reopened on the first request for its id.
"""

from __future__ import annotations

import asyncio
import ctypes
import fcntl
import gc
import ipaddress
import logging
import math
import os
import re
import shutil
import tempfile
import threading
import time
import uuid
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np
import SimpleITK as sitk
import torch

from ..engine.cache import CacheView, FeatureCache
from ..engine.persistence import restore_objects, take_snapshot
from ..engine.session2d import SliceSession
from ..engine.session3d import Session
from ..errors import FastSAM3DError, VolumeError
from ..io import Volume, holds_dicom, read_volume
from ..registry import MODEL_CONFIGS, load_model, spatial_dims
from .lease import Leases
from .state import RECORD_ERRORS, RecordEncoder, RecordWriter, SessionRecords

VOLUME_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd", ".zip")
UPLOAD_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha", ".zip")
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")
MAX_PATH_CHARS = 1024
MAX_NAME_CHARS = 255
CHUNK = 1 << 20
log = logging.getLogger(__name__)


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
    allowed_hosts: tuple[str, ...] = LOOPBACK_HOSTS  # Host header values accepted ("*": any)
    max_sessions: int = 64  # open at once; with a state folder the least recently used idle one makes room
    cache_mb: float = 2048.0  # cached image features of all sessions together (LRU: idle sessions' go first)
    precision: str = "auto"  # image encoder arithmetic (fastsam3d.modeling.precision): auto, fp32, bf16, int8
    max_upload_mb: float = 2048.0  # volume and mask uploads
    max_unpacked_mb: float = 2048.0  # decoded image bytes, and the unpacked size of a zip
    max_voxels: int = 2**28
    max_zip_entries: int = 5000
    max_points: int = 100  # per click request
    max_stroke_pixels: int = 1 << 20  # per drawn scribble / lasso crop (a 1024 x 1024 slice)
    request_seconds: float = 120.0  # one request's wait for its session plus its work
    idle_seconds: float = 1800.0
    temp_dir: Path | None = None  # default: <system temp>/fastsam3d-server
    state_dir: Path | None = None  # saved sessions (see .state); None: sessions end with the server
    keep_days: float = 14.0  # saved sessions unchanged this long are deleted
    sync_saves: bool = False  # answer a change only once its record is on disk (else just after)
    lease_seconds: float = 30.0  # a saved session's lease (see .lease): how soon another server may take it over


@dataclass
class ServerSession:
    id: str
    name: str
    session: Session | SliceSession
    folder: Path  # private temporary folder (upload, exports; removed on close)
    dicom_dir: Path | None  # the DICOM series the volume came from, for DICOM-SEG export
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)  # held while work runs (see worker.py)
    waiting: int = 0  # requests queued for the lock
    closed: bool = False
    intensity: tuple[float, float] = (0.0, 0.0)
    last_used: float = field(default_factory=time.monotonic)
    model: str = ""
    image: dict = field(default_factory=dict)  # how to read the image again: {"data": path} or {"upload": file}
    created: float = field(default_factory=time.time)
    updated: float = field(default_factory=time.time)  # last change
    changes: int = 0
    encoder: RecordEncoder = field(default_factory=RecordEncoder)
    features: CacheView | None = None  # its part of the server's feature cache


class TempFolder:
    """This server's folder under the temp root, marked live by a lock held while the process runs.

    A folder whose lock file is not locked belongs to a server that died (even by kill -9: the
    kernel drops the lock), so it is removed at start-up.
    """

    def __init__(self, root: Path | None = None) -> None:
        self.root = Path(root or Path(tempfile.gettempdir()) / "fastsam3d-server").resolve()
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.stale_removed = self._remove_stale()
        handle, pending = tempfile.mkstemp(prefix=".pending-", dir=self.root)
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        self._lock_fd = handle
        self.path = self.root / f"server-{uuid.uuid4().hex[:12]}"
        self.path.mkdir(mode=0o700)
        os.rename(pending, self.path.with_suffix(".lock"))  # visible only once locked

    def new_folder(self) -> Path:
        """A private folder for one session's files."""
        return Path(tempfile.mkdtemp(prefix="session-", dir=self.path))

    def remove(self) -> None:
        """Remove this server's folder (at shutdown)."""
        shutil.rmtree(self.path, ignore_errors=True)
        self.path.with_suffix(".lock").unlink(missing_ok=True)
        os.close(self._lock_fd)

    def _remove_stale(self) -> int:
        removed = 0
        for lock in self.root.glob("server-*.lock"):
            try:
                handle = os.open(lock, os.O_RDWR)
            except OSError:
                continue
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                shutil.rmtree(lock.with_suffix(""), ignore_errors=True)
                lock.unlink(missing_ok=True)
                removed += 1
            except OSError:
                pass  # a live server holds the lock
            finally:
                os.close(handle)
        return removed


class SessionStore:
    """Open, find, expire and close sessions; check every file against the size limits first."""

    def __init__(self, settings: ServerSettings, model: torch.nn.Module | None = None) -> None:
        tune_allocator()
        self.settings = settings
        self.device = torch.device(settings.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if model is not None:
            self._models: dict[str, torch.nn.Module] = {settings.model: model}
        else:  # loaded on first use, kept
            self._models = {settings.model: self._load(settings.model, settings.checkpoint)}
        self.model = self._models[settings.model]
        self._sessions: dict[str, ServerSession] = {}
        self._lock = threading.RLock()
        self._reopening = threading.Lock()
        self.temp = TempFolder(settings.temp_dir)
        self.records = SessionRecords(settings.state_dir, settings.keep_days) if settings.state_dir else None
        self.writer = RecordWriter() if self.records else None
        self.leases = Leases(self.records.folder, settings.lease_seconds) if self.records else None
        self.features = FeatureCache(settings.cache_mb)

    def models(self) -> list[dict]:
        """Every model a session can be opened with: the server's own (first), the shipped ones and
        the official ones (3D and 2D), each with ``name, dims, prompts, available, description``;
        ``available`` is false for official weights not downloaded on this server yet."""
        from ..hub import official_models
        from ..registry import weights_status

        rows = {self.settings.model: self._describe_model(self.settings.model, True)}
        for row in official_models():
            if row["runnable"]:
                rows.setdefault(row["name"], self._describe_model(row["name"], row["cached"], row["description"]))
        for name, config in MODEL_CONFIGS.items():
            if weights_status(name) == "shipped":
                rows.setdefault(name, self._describe_model(name, True, config.description))
        for name in self._models:
            rows[name] = {**rows.get(name, self._describe_model(name, True)), "available": True}
        return list(rows.values())

    def available_models(self) -> list[str]:
        """Names of the models a session can be opened with now."""
        return [row["name"] for row in self.models() if row["available"]]

    def model_for(self, name: str | None) -> torch.nn.Module:
        """A model by name (one of :meth:`available_models`), loaded once and shared by all sessions."""
        name = name or self.settings.model
        if name not in self._models:
            rows = {row["name"]: row for row in self.models()}
            if name not in rows:
                raise FastSAM3DError(
                    f"model {name!r} is not offered by this server; choose from {', '.join(self.available_models())}"
                )
            if not rows[name]["available"]:
                raise FastSAM3DError(
                    f"model {name!r}: its weights are not on this server; there run `fastsam3d weights fetch {name}`"
                )
        with self._lock:
            if name not in self._models:
                self._models[name] = self._load(name, None)
        return self._models[name]

    def _load(self, name: str, checkpoint: str | None) -> torch.nn.Module:
        precision = self.settings.precision if spatial_dims(name) == 3 else "fp32"  # --precision is for 3D encoders
        return load_model(name, checkpoint, device=self.device, precision=precision)

    def _describe_model(self, name: str, available: bool, description: str = "") -> dict:
        config = getattr(self._models.get(name), "config", None) or MODEL_CONFIGS.get(name)
        if config is None or config.spatial_dims == 3:
            return {
                "name": name,
                "dims": 3,
                "prompts": ["point", "box"],
                "available": available,
                "description": description or getattr(config, "description", ""),
            }
        return {
            "name": name,
            "dims": 2,
            "prompts": ["point", "box"] if config.point_prompts else ["box"],
            "clicks": "points" if config.point_prompts else "box edits",
            "available": available,
            "description": description or config.description,
        }

    def __len__(self) -> int:
        return len(self._sessions)

    def data_files(self) -> list[str]:
        """Volumes under the data folder (relative paths; DICOM folders end with ``/``): exactly those
        :meth:`resolve_data_path` opens, so a symlink is listed only when it resolves inside the folder."""
        root = self._data_root()
        found = []
        for path in sorted(root.rglob("*")):
            relative = path.relative_to(root).as_posix()
            if path.is_symlink() and not _resolves_inside(path, root):
                continue
            if path.is_file() and relative.lower().endswith(VOLUME_SUFFIXES):
                found.append(relative)
            elif path.is_dir() and holds_dicom(path):
                found.append(relative + "/")
        return found

    def resolve_data_path(self, relative: str) -> Path:
        """A path inside the data folder; anything that escapes it (or is no valid path) is refused."""
        root = self._data_root()
        missing = VolumeError(f"no volume {display_name(relative, '?')!r} in the data folder")
        if len(relative) > MAX_PATH_CHARS or re.search(r"[\x00-\x1f]", relative):
            raise missing
        if any(len(part.encode()) > MAX_NAME_CHARS for part in relative.split("/")):
            raise missing
        path = _resolves_inside(root / relative, root)
        if path is None:
            raise missing
        return path

    def _data_root(self) -> Path:
        if self.settings.data_dir is None:
            raise FastSAM3DError("the server was started without --data: only uploads are possible")
        return Path(self.settings.data_dir).resolve()

    def open_path(self, relative: str, model: str | None = None) -> ServerSession:
        """A session on a volume of the data folder (runs in a worker thread)."""
        self._check_room()
        network = (model or self.settings.model, self.model_for(model))
        path = self.resolve_data_path(relative)
        volume = self.read(path, display_name(relative, "volume"))
        dicom_dir = path if path.is_dir() else None
        folder = self.temp.new_folder()
        return self._add(volume, relative, folder, dicom_dir, network, image={"data": relative})

    def open_upload(self, source: BinaryIO, filename: str | None, model: str | None = None) -> ServerSession:
        """A session from an uploaded volume or zipped DICOM series (runs in a worker thread).

        The upload is stored under a name of our own; the client's name is only shown."""
        name = display_name(filename, "upload.nii.gz")
        suffix = next((s for s in UPLOAD_SUFFIXES if (filename or name).lower().endswith(s)), None)
        if suffix is None:
            raise VolumeError("upload a .nii.gz, .nii, .nrrd, .mha file or a .zip of a DICOM series")
        self._check_room()
        network = (model or self.settings.model, self.model_for(model))
        folder = self.temp.new_folder()
        session_id = uuid.uuid4().hex
        try:
            path = folder / f"upload{suffix}"
            with open(path, "wb") as sink:
                shutil.copyfileobj(source, sink, CHUNK)
            image = {"upload": self._keep_upload(path, session_id) if self.records else None}
            dicom_dir = None
            if suffix == ".zip":
                unpacked = folder / "dicom"
                _safe_unzip(path, unpacked, self.settings.max_unpacked_mb * 2**20, self.settings.max_zip_entries)
                path.unlink()
                path = dicom_dir = _single_series(unpacked)
            volume = self.read(path, name)
            return self._add(volume, name, folder, dicom_dir, network, image=image, session_id=session_id)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            if self.records:
                self.records.delete(session_id)
            raise

    def _keep_upload(self, path: Path, session_id: str) -> str:
        """A copy of an uploaded file in the state folder (a hard link where possible); its name."""
        kept = self.records.folder / f"{session_id}.{path.name}"
        try:
            os.link(path, kept)
        except OSError:
            shutil.copyfile(path, kept)
        return kept.name

    def read(self, path: Path, name: str) -> Volume:
        """Read a volume after checking its header against the voxel and byte limits; errors name
        it ``name``, never by its path on the server."""
        try:
            self.check_size(path, name)
            return read_volume(path)
        except VolumeError as error:
            raise VolumeError(str(error).replace(str(path), name)) from None

    def check_size(self, path: Path, name: str) -> None:
        """Refuse an image whose header promises more voxels or bytes than the limits (before decoding)."""
        header = sitk.ImageFileReader()
        try:
            if path.is_dir() or path.suffix.lower() == ".dcm":
                folder = path if path.is_dir() else path.parent
                reader = sitk.ImageSeriesReader()
                series = [
                    reader.GetGDCMSeriesFileNames(str(folder), sid)
                    for sid in reader.GetGDCMSeriesIDs(str(folder)) or []
                ]
                files = max(series, key=len, default=())
                if not files:
                    raise VolumeError(f"no DICOM series found in {name}")
                header.SetFileName(files[0])
                header.ReadImageInformation()
                size = (*header.GetSize()[:2], len(files))
            else:
                header.SetFileName(str(path))
                header.ReadImageInformation()
                size = header.GetSize()
        except RuntimeError:
            raise VolumeError(
                f"cannot read {name}: file is corrupt, truncated or not a supported image (NIfTI, NRRD, MHA, DICOM)"
            ) from None
        voxels = math.prod(size) * header.GetNumberOfComponents()
        bits = re.search(r"(\d+)-bit", sitk.GetPixelIDValueAsString(header.GetPixelID()))
        megabytes = voxels * (int(bits.group(1)) // 8 if bits else 8) / 2**20
        shape = "x".join(map(str, size))
        if voxels > self.settings.max_voxels:
            raise VolumeError(
                f"{name} has {voxels} voxels ({shape}); this server accepts at most {self.settings.max_voxels}"
            )
        if megabytes > self.settings.max_unpacked_mb:
            raise VolumeError(
                f"{name} unpacks to {megabytes:.0f} MB ({shape}); this server accepts at most "
                f"{self.settings.max_unpacked_mb:.0f} MB"
            )

    def _check_room(self) -> None:
        """Refuse a new session at the limit; with a state folder, close (keeping its record) the
        least recently used session that is not working instead."""
        if len(self._sessions) >= self.settings.max_sessions and self.records is not None:
            idle = [e for e in list(self._sessions.values()) if not e.lock.locked() and not e.waiting]
            if idle:
                self._drop([min(idle, key=lambda e: e.last_used)])
        if len(self._sessions) >= self.settings.max_sessions:
            raise SessionLimitError(f"{len(self._sessions)} sessions are open (the limit); close one first")

    def _add(
        self,
        volume: Volume,
        name: str,
        folder: Path,
        dicom_dir: Path | None,
        model: tuple[str, torch.nn.Module],
        image: dict,
        session_id: str | None = None,
        saved: dict | None = None,
    ) -> ServerSession:
        """A new session (or, with ``saved``, a reopened one: a record's JSON and its objects)."""
        model_name, network = model
        session_id = session_id or uuid.uuid4().hex
        try:
            with self._lock:
                self._check_room()
                if self.leases is not None:
                    self.leases.acquire(session_id)
                engine = SliceSession if getattr(network, "spatial_dims", 3) == 2 else Session
                features = self.features.view()
                session = engine(network, device=self.device, cache_mb=self.settings.cache_mb, feature_cache=features)
                session.set_image(volume)
                entry = ServerSession(
                    session_id,
                    name,
                    session,
                    folder,
                    dicom_dir,
                    intensity=(float(volume.array.min()), float(volume.array.max())),
                    model=model_name,
                    image=image,
                    features=features,
                )
                if saved is not None:
                    restore_objects(session, saved["objects"], saved["meta"]["active"])
                    entry.created, entry.updated = saved["meta"]["created"], saved["meta"]["updated"]
                    entry.changes = saved["meta"]["changes"]
                else:
                    self.save(entry)
                self._sessions[entry.id] = entry
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            if self.leases is not None:
                self.leases.release(session_id)
            raise
        return entry

    # --- saved sessions (see .state) --------------------------------------------------------

    def save(self, entry: ServerSession) -> None:
        """Save the session after a change: a snapshot now (microseconds, under the session's
        lock), the record written by the background writer."""
        if self.records is None:
            return
        entry.changes += 1
        entry.updated = time.time()
        header = {
            "id": entry.id,
            "name": entry.name,
            "image": entry.image,
            "model": entry.model,
            "precision": getattr(entry.session, "precision", "fp32"),
            "dims": entry.session.dims,
            "created": entry.created,
            "updated": entry.updated,
            "changes": entry.changes,
        }
        snapshot = take_snapshot(entry.session)
        encoder, engine, records, leases = entry.encoder, entry.session, self.records, self.leases

        def write() -> None:
            if leases.owns(entry.id):  # else another server took the session over: its record now
                records.write(*encoder.encode(engine, snapshot, header))

        written = self.writer.submit(entry.id, write)
        if self.settings.sync_saves:
            written.result()

    def is_saved(self, session_id: str) -> bool:
        return self.records is not None and self.records.exists(session_id)

    def reopen(self, session_id: str) -> ServerSession:
        """The open session with this id, reopened from its record if needed (runs in a worker
        thread; image features are computed again on the next click)."""
        with self._reopening:
            entry = self._sessions.get(session_id)
            if entry is not None:
                return self.get(session_id)
            self.leases.acquire(session_id)  # before reading: the holder's last write is in the record
            try:
                meta, objects, labels = self.records.load(session_id)
            except RECORD_ERRORS as error:  # a damaged record: skipped, never a crash
                self.leases.release(session_id)
                self.records.forget(session_id, f"unreadable ({type(error).__name__}: {error})")
                raise UnknownSessionError(f"saved session {session_id!r} cannot be read") from None
            network = (meta["model"], self.model_for(meta["model"]))
            folder = self.temp.new_folder()
            try:
                path, dicom_dir = self._saved_image(meta["image"], folder)
                volume = self.read(path, meta["name"])
            except BaseException:
                shutil.rmtree(folder, ignore_errors=True)
                self.leases.release(session_id)
                raise
            saved = {"meta": meta, "objects": objects}
            try:
                entry = self._add(volume, meta["name"], folder, dicom_dir, network, meta["image"], session_id, saved)
            except RECORD_ERRORS as error:  # objects that do not fit the image or the engine
                self.leases.release(session_id)
                self.records.forget(session_id, f"cannot be restored ({type(error).__name__}: {error})")
                raise UnknownSessionError(f"saved session {session_id!r} cannot be restored") from None
            if labels is not None and not np.array_equal(entry.session.labels[labels[0]], labels[1]):
                log.warning(f"saved session {session_id}: the restored label map differs from the saved one")
            return entry

    def _saved_image(self, image: dict, folder: Path) -> tuple[Path, Path | None]:
        """The image file (or DICOM folder) of a saved session, and its DICOM folder if any."""
        if image.get("data") is not None:
            path = self.resolve_data_path(image["data"])
            return path, path if path.is_dir() else None
        kept = self.records.folder / display_name(image.get("upload"), "?")
        if not kept.is_file():
            raise UnknownSessionError("the uploaded image of this saved session is gone")
        if kept.name.endswith(".zip"):
            unpacked = folder / "dicom"
            _safe_unzip(kept, unpacked, self.settings.max_unpacked_mb * 2**20, self.settings.max_zip_entries)
            series = _single_series(unpacked)
            return series, series
        return kept, None

    def sessions(self) -> list[dict]:
        """Open and saved sessions, most recently changed first."""
        rows = {}
        if self.records is not None:
            self.records.scan()
            for meta in list(self.records.index.values()):
                rows[meta["id"]] = {
                    "id": meta["id"],
                    "name": meta["name"],
                    "model": meta["model"],
                    "dims": meta["dims"],
                    "objects": meta["objects"],
                    "updated": meta["updated"],
                    "open": False,
                }
        for entry in list(self._sessions.values()):
            objects = [{"label": label, "name": obj.name} for label, obj in list(entry.session.objects.items())]
            rows[entry.id] = {
                "id": entry.id,
                "name": entry.name,
                "model": entry.model,
                "dims": entry.session.dims,
                "objects": objects,
                "updated": entry.updated,
                "open": True,
            }
        return sorted(rows.values(), key=lambda row: -row["updated"])

    def get(self, session_id: str) -> ServerSession:
        entry = self._sessions.get(session_id)
        if entry is not None and self._idle(entry, time.monotonic() - self.settings.idle_seconds):
            self.expire()  # its record (if any) stays
            entry = None
        if entry is not None and self.leases is not None and not self.leases.owns(session_id):
            self._drop([entry])  # another server took it over (this one stalled past its lease)
            entry = None
        if entry is None:
            raise UnknownSessionError(f"no session {display_name(session_id, '?')!r} (closed, expired or never opened)")
        entry.last_used = time.monotonic()
        return entry

    def close(self, session_id: str) -> None:
        """Close a session and delete its record; its files go once its running work (if any) ends."""
        with self._lock:
            entry = self._sessions.pop(session_id, None)
        saved = self.is_saved(session_id)
        if saved:
            self.writer.cancel(session_id)
            self.records.delete(session_id)
        if entry is None:
            if saved:
                return
            raise UnknownSessionError(f"no session {display_name(session_id, '?')!r} (closed, expired or never opened)")
        entry.closed = True
        if not entry.lock.locked():
            release(entry)

    def expire(self) -> None:
        """Close sessions idle for longer than ``idle_seconds`` (and not working)."""
        limit = time.monotonic() - self.settings.idle_seconds
        self._drop([entry for entry in list(self._sessions.values()) if self._idle(entry, limit)])

    def _drop(self, entries: list[ServerSession]) -> None:
        """Close sessions but keep their records (and give up their leases)."""
        with self._lock:
            entries = [self._sessions.pop(entry.id) for entry in entries if entry.id in self._sessions]
        if entries and self.writer is not None:
            self.writer.flush()  # their last saves, while the leases are still this server's
        for entry in entries:
            entry.closed = True
            if self.leases is not None:
                self.leases.release(entry.id)
            if not entry.lock.locked():
                release(entry)

    def renew_leases(self) -> None:
        """Extend the leases of the open sessions; drop those another server took over."""
        if self.leases is not None:
            lost = set(self.leases.renew(list(self._sessions)))
            self._drop([entry for entry in list(self._sessions.values()) if entry.id in lost])

    @staticmethod
    def _idle(entry: ServerSession, since: float) -> bool:
        return entry.last_used < since and not entry.lock.locked() and not entry.waiting

    def close_all(self) -> None:
        """Close every session and remove this server's temporary folder (at shutdown)."""
        with self._lock:
            entries = list(self._sessions.values())
            self._sessions.clear()
        for entry in entries:
            entry.closed = True
        if self.writer is not None:
            self.writer.stop()  # what is pending is written first
            for entry in entries:
                self.leases.release(entry.id)
        self.temp.remove()
        release_memory()

    def scrub(self, message: str) -> str:
        """A message without this server's temporary or data folder paths."""
        roots = [str(self.temp.root)] + ([str(self._data_root())] if self.settings.data_dir is not None else [])
        for root in roots:
            message = message.replace(root + os.sep, "").replace(root, "<server folder>")
        return message


def is_loopback(host: str) -> bool:
    """Whether binding to ``host`` keeps the server on this machine."""
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_binding(host: str, api_key: str | None, insecure: bool = False) -> None:
    """Refuse to expose the server beyond this machine without an API key (unless ``insecure``)."""
    if not is_loopback(host) and not api_key and not insecure:
        raise FastSAM3DError(
            f"--host {host} exposes the server beyond this machine: give --api-key "
            "(or $FASTSAM3D_API_KEY), or --insecure to serve without one"
        )


def display_name(name: str | None, default: str) -> str:
    """A client-given file name made safe to show: its last part, no control characters, ≤ 100 characters."""
    name = re.sub(r"[\x00-\x1f\x7f]", "", (name or "").replace("\\", "/").rsplit("/", 1)[-1])[:100]
    return name or default


def release(entry: ServerSession) -> None:
    """Remove a closed session's files and give its memory back to the system."""
    shutil.rmtree(entry.folder, ignore_errors=True)
    if entry.features is not None:
        entry.features.clear()
    release_memory()


_LIBC = ctypes.CDLL(None) if os.name == "posix" else None
M_ARENA_MAX = -8  # glibc mallopt parameter
ARENAS = 2


def tune_allocator() -> None:
    """Two glibc malloc arenas for the whole process instead of one per thread (up to 8 per core).

    Freed session arrays otherwise stay behind in the arenas of the worker threads that allocated
    them (fragmentation, not a leak: ``malloc_trim`` gives most of it back). Measured with 8
    sessions on a 384x384x200 CT in 8 threads, RSS after closing them all, against 567 MB with one
    session: default 910 MB, 1234 MB after a second round; trim only 526, then 698 MB; 2 arenas +
    trim 531, then 547 MB. (A fixed 1 MB mmap threshold also worked, 537 MB, but made cached
    clicks about 40 % slower: every large temporary got fresh pages.) A no-op without glibc."""
    mallopt = getattr(_LIBC, "mallopt", None)
    if mallopt is not None:
        mallopt(M_ARENA_MAX, ARENAS)


def release_memory() -> None:
    """Collect garbage, then return free heap pages to the system (glibc ``malloc_trim``)."""
    gc.collect()
    trim = getattr(_LIBC, "malloc_trim", None)
    if trim is not None:
        trim(0)


def _safe_unzip(archive: Path, target: Path, max_bytes: float, max_entries: int) -> None:
    """Extract a zip, refusing members that escape ``target``, more than ``max_entries`` files, and
    archives that inflate past ``max_bytes``. The declared sizes are enough: ``zipfile`` never
    inflates a member past its declared size (a member that lies fails its CRC check)."""
    try:
        with zipfile.ZipFile(archive) as handle:
            members = [m for m in handle.infolist() if not m.is_dir()]
            if len(members) > max_entries:
                raise VolumeError(f"the zip file holds {len(members)} files; this server accepts at most {max_entries}")
            if sum(m.file_size for m in members) > max_bytes:
                raise VolumeError(f"the zip file unpacks to more than {max_bytes / 2**20:.0f} MB")
            target.mkdir(parents=True, exist_ok=True)
            root = target.resolve()
            for member in members:
                destination = (target / member.filename).resolve()
                if not destination.is_relative_to(root):
                    raise VolumeError(
                        f"the zip file has a member outside its folder: {display_name(member.filename, '?')!r}"
                    )
                destination.parent.mkdir(parents=True, exist_ok=True)
                with handle.open(member) as source, open(destination, "wb") as sink:
                    shutil.copyfileobj(source, sink, CHUNK)
    except (zipfile.BadZipFile, OSError, RuntimeError, NotImplementedError, EOFError, ValueError, zlib.error):
        raise VolumeError(
            "the zip file cannot be unpacked (corrupt, encrypted, or a member name the system refuses)"
        ) from None


def _single_series(folder: Path) -> Path:
    """The folder holding the DICOM files of an unzipped archive (the deepest one with files)."""
    candidates = sorted({p.parent for p in folder.rglob("*") if p.is_file()}, key=lambda p: len(p.parts))
    if not candidates:
        raise VolumeError("the zip file holds no files")
    return max(candidates, key=lambda p: sum(1 for f in p.iterdir() if f.is_file()))


def _resolves_inside(path: Path, root: Path) -> Path | None:
    """The existing file or folder ``path`` leads to with every symlink followed, or None when that
    leaves ``root`` (a resolved folder), is missing or cannot be resolved (a loop, a name the OS refuses)."""
    try:
        resolved = path.resolve()
        return resolved if resolved.is_relative_to(root) and resolved.exists() else None
    except (OSError, RuntimeError, ValueError):
        return None
