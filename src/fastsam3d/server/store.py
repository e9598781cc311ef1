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
import logging
import os
import shutil
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch

from ..engine.cache import CacheView, FeatureCache
from ..engine.interface import open_session
from ..engine.persistence import restore_objects, take_snapshot
from ..engine.session2d import SliceSession
from ..engine.session3d import Session
from ..errors import FastSAM3DError, VolumeError
from ..io import Volume, drop_mapped_pages
from ..runtime import default_device
from .files import (
    CHUNK,
    UPLOAD_SUFFIXES,
    DataFolder,
    TempFolder,
    display_name,
    keep_upload,
    read_checked,
    safe_unzip,
    single_series,
)
from .lease import Leases, SessionElsewhereError
from .memory import mapped, release, release_memory, tune_allocator
from .models import ServerModels
from .settings import ServerSettings
from .state import RECORD_ERRORS, RecordEncoder, RecordWriter, SessionRecords

log = logging.getLogger(__name__)
LOGITS_KEPT = 2  # undo steps on each side of an object's current one that keep their model logits


class SessionLimitError(FastSAM3DError):
    """Too many open sessions."""


class SaveError(FastSAM3DError):
    """With ``--sync-saves``: a change whose record could not be written (it is rolled back)."""


class UnknownSessionError(FastSAM3DError):
    """No session with that id (never opened, closed or expired)."""


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


class SessionStore:
    """Open, find, expire and close sessions; check every file against the size limits first."""

    def __init__(self, settings: ServerSettings, model: torch.nn.Module | None = None) -> None:
        tune_allocator()
        self.settings = settings
        self.device = torch.device(settings.device or default_device())
        self.models = ServerModels(settings, self.device, model)
        self.model = self.models.loaded[settings.model]
        self._sessions: dict[str, ServerSession] = {}
        self._lock = threading.RLock()
        self._reopening = threading.Lock()
        self.temp = TempFolder(settings.temp_dir)
        self.records = SessionRecords(settings.state_dir, settings.keep_days) if settings.state_dir else None
        self.writer = RecordWriter() if self.records else None
        self.leases = Leases(self.records.folder, settings.lease_seconds) if self.records else None
        self.features = FeatureCache(settings.cache_mb)
        self.data = DataFolder(settings.data_dir)

    def __len__(self) -> int:
        return len(self._sessions)

    def open_path(self, relative: str, model: str | None = None) -> ServerSession:
        """A session on a volume of the data folder (runs in a worker thread)."""
        self._check_room()
        network = (model or self.settings.model, self.models.get(model))
        path = self.data.resolve(relative)
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
        network = (model or self.settings.model, self.models.get(model))
        folder = self.temp.new_folder()
        session_id = uuid.uuid4().hex
        try:
            path = folder / f"upload{suffix}"
            with open(path, "wb") as sink:
                shutil.copyfileobj(source, sink, CHUNK)
            image = {"upload": keep_upload(path, self.records.folder, session_id) if self.records else None}
            dicom_dir = None
            if suffix == ".zip":
                unpacked = folder / "dicom"
                safe_unzip(path, unpacked, self.settings.max_unpacked_mb * 2**20, self.settings.max_zip_entries)
                path.unlink()
                path = dicom_dir = single_series(unpacked)
            volume = self.read(path, name)
            return self._add(volume, name, folder, dicom_dir, network, image=image, session_id=session_id)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            if self.records:
                self.records.delete(session_id)
            raise

    def read(self, path: Path, name: str) -> Volume:
        """Read a volume within this server's voxel and byte limits (:func:`.files.read_checked`)."""
        return read_checked(path, name, self.settings.max_voxels, self.settings.max_unpacked_mb)

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
            intensity = (float(volume.array.min()), float(volume.array.max()))
            volume = mapped(volume, folder / "voxels.npy")
            with self._lock:
                self._check_room()
                if self.leases is not None:
                    self.leases.acquire(session_id)
                features = self.features.view()
                session = open_session(
                    network, device=self.device, cache_mb=self.settings.cache_mb, feature_cache=features
                )
                session.set_image(volume)
                drop_mapped_pages(volume.array)  # read whole by the engine's checks: only the ROIs' pages are needed
                entry = ServerSession(
                    session_id,
                    name,
                    session,
                    folder,
                    dicom_dir,
                    intensity=intensity,
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
        lock), the record written by the background writer. Steps already saved and more than
        ``LOGITS_KEPT`` steps from their object's current one are held as their masks from then on.
        A closed session is not saved again (a job that ends after its DELETE would otherwise bring
        its record, and a reopening, back). With ``sync_saves`` a failed write raises
        :class:`SaveError` (or :class:`SessionElsewhereError`), and the caller's transaction rolls
        the change back."""
        if self.records is None or entry.closed:
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
        entry.encoder.steps.hold_steps(entry.session, LOGITS_KEPT)  # saved steps far back: masks, not logits
        snapshot = take_snapshot(entry.session)
        encoder, engine, records, leases = entry.encoder, entry.session, self.records, self.leases

        def write() -> None:
            if entry.closed:
                return
            if not leases.owns(entry.id):  # this server stalled past its lease and another one took it over
                raise SessionElsewhereError("another server took this session over; the change was not saved")
            records.write(*encoder.encode(engine, snapshot, header))

        written = self.writer.submit(entry.id, write)
        if self.settings.sync_saves:
            try:
                written.result()
            except RECORD_ERRORS as error:
                raise SaveError(
                    f"the change could not be saved ({type(error).__name__}), so it was not applied"
                ) from None

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
            network = (meta["model"], self.models.get(meta["model"]))
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
            path = self.data.resolve(image["data"])
            return path, path if path.is_dir() else None
        kept = self.records.folder / display_name(image.get("upload"), "?")
        if not kept.is_file():
            raise UnknownSessionError("the uploaded image of this saved session is gone")
        if kept.name.endswith(".zip"):
            unpacked = folder / "dicom"
            safe_unzip(kept, unpacked, self.settings.max_unpacked_mb * 2**20, self.settings.max_zip_entries)
            series = single_series(unpacked)
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
        roots = [str(self.temp.root)] + ([str(self.data.root())] if self.settings.data_dir is not None else [])
        for root in roots:
            message = message.replace(root + os.sep, "").replace(root, "<server folder>")
        return message
