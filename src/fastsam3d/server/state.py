"""Sessions saved on disk (``fastsam3d serve --state-dir``), so that they outlive the server.

Each session is one record file, ``<session id>.npz`` (a zip that ``numpy.load`` opens), holding:

- ``meta``: UTF-8 JSON: ``format``/``version``, the image (``{"data": path under --data}`` or
  ``{"upload": file in the state folder}``), model, precision, engine ``dims`` (3 or 2), times, the
  active object and each object's label, name, current step and history steps (prompts as JSON, the
  mask's box and the member holding its bits);
- ``labels``: the label map inside the box of its non-zero voxels (zlib, C order);
- one member per history step with a mask: its packed bits (``np.packbits``, zlib).

A record is rewritten whole after every change by one background thread (:class:`RecordWriter`);
the newest pending save of a session replaces an older one, and each write goes to a temporary
file that is synced and renamed over the record, so a record is always a complete one. Steps are
encoded and compressed once (states are immutable). Nothing here decides policy: the store calls it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import threading
import time
import uuid
import zipfile
import zlib
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path

import numpy as np

from ..engine.base import ObjectEngine
from ..engine.labelmap import PackedMask, union_box
from ..engine.persistence import SavedObject, SavedStep, Snapshot, StepEncoder

FORMAT = "fastsam3d-session"
FORMAT_VERSION = 1
SESSION_ID = re.compile(r"[0-9a-f]{32}")
STALE_TEMP_SECONDS = 3600.0
RECORD_ERRORS = (OSError, ValueError, KeyError, TypeError, EOFError, zlib.error, zipfile.BadZipFile)  # damage
log = logging.getLogger(__name__)


class RecordEncoder:
    """One session's successive records (each step's mask is encoded and compressed once)."""

    def __init__(self) -> None:
        self.steps = StepEncoder()

    def encode(self, engine: ObjectEngine, snapshot: Snapshot, header: dict) -> tuple[dict, dict[str, np.ndarray]]:
        """The record's JSON and its arrays for ``snapshot`` (``header``: the session's fields)."""
        objects = self.steps.encode(engine, snapshot)
        members: dict[str, np.ndarray] = {}
        described = []
        for obj in objects:
            steps = []
            for number, step in enumerate(obj.steps):
                mask = None
                if step.mask.box is not None:
                    name = f"object{obj.label}_step{number}"
                    members[name] = step.mask.compress().bits
                    mask = {"box": _box_json(step.mask.box), "member": name}
                steps.append({"prompts": step.prompts, "mask": mask})
            described.append({"label": obj.label, "name": obj.name, "position": obj.position, "steps": steps})
        labels = _label_crop(objects)
        meta = header | {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "shape": list(snapshot.shape),
            "active": snapshot.active,
            "objects": described,
            "labels": None if labels is None else {"box": _box_json(labels[0]), "dtype": labels[1].dtype.name},
        }
        if labels is not None:
            members["labels"] = _compressed(labels[1])
        return meta, members


class SessionRecords:
    """The state folder: write, list, load and delete records; old ones are removed."""

    def __init__(self, folder: Path, keep_days: float) -> None:
        self.folder = Path(folder).expanduser().resolve()
        self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.keep_seconds = keep_days * 86400.0
        self.index: dict[str, dict] = {}  # id -> the record's JSON without its steps
        self._read_at: dict[str, float] = {}  # id -> modification time of the record listed
        self.remove_old()
        self.scan()

    def scan(self) -> None:
        """List the records again (other servers on this folder write some): read the new and
        changed ones, forget the deleted ones; damaged ones are skipped with a log line."""
        found = {}
        for path in self.folder.glob("*.npz"):
            with contextlib.suppress(OSError):
                found[path.stem] = path.stat().st_mtime
        for session_id in set(self.index) - set(found):
            self.index.pop(session_id, None)
        for session_id, modified in sorted(found.items()):
            if self._read_at.get(session_id) != modified:
                self._read_at[session_id] = modified
                summary = self._summary(self.folder / f"{session_id}.npz")
                if summary is not None:
                    self.index[session_id] = summary

    def path(self, session_id: str) -> Path:
        if not SESSION_ID.fullmatch(session_id):
            raise ValueError("not a session id")
        return self.folder / f"{session_id}.npz"

    def exists(self, session_id: str) -> bool:
        return SESSION_ID.fullmatch(session_id) is not None and self.path(session_id).is_file()

    def write(self, meta: dict, members: dict[str, np.ndarray]) -> None:
        """Replace the session's record atomically (temporary file, fsync, rename)."""
        path = self.path(meta["id"])
        temp = path.with_name(f".{path.stem}-{uuid.uuid4().hex[:8]}.tmp")
        try:
            with open(temp, "wb") as handle:
                np.savez(handle, meta=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8), **members)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temp, path)
        except BaseException:
            temp.unlink(missing_ok=True)
            raise
        _sync_folder(self.folder)
        self.index[meta["id"]] = _without_steps(meta)

    def load(self, session_id: str) -> tuple[dict, tuple[SavedObject, ...], tuple | None]:
        """A record's JSON, its objects and its label map crop (box, array); raises ValueError
        (or an OSError) for a record that is missing, corrupt or of another format."""
        with np.load(self.path(session_id), allow_pickle=False) as record:
            meta = _checked_meta(record["meta"])
            shape = tuple(meta["shape"])
            objects = tuple(
                SavedObject(
                    obj["label"],
                    obj["name"],
                    obj["position"],
                    tuple(_step(record, step, shape) for step in obj["steps"]),
                )
                for obj in meta["objects"]
            )
            labels = None
            if meta["labels"] is not None:
                box = _box(meta["labels"]["box"])
                size = tuple(s.stop - s.start for s in box)
                raw = zlib.decompress(record["labels"].tobytes())
                labels = (box, np.frombuffer(raw, dtype=meta["labels"]["dtype"]).reshape(size))
        return meta, objects, labels

    def delete(self, session_id: str) -> None:
        """Remove a session's record and its uploaded image."""
        self.index.pop(session_id, None)
        for path in self.folder.glob(f"{session_id}.*"):
            path.unlink(missing_ok=True)

    def forget(self, session_id: str, reason: str) -> None:
        """Drop an unreadable record from the listing (the file stays, for inspection)."""
        log.warning(f"skipping saved session {session_id}: {reason}")
        self.index.pop(session_id, None)

    def remove_old(self) -> int:
        """Delete records not changed for ``keep_days`` (with their uploads), and stale temporary files."""
        now = time.time()
        removed = 0
        for path in self.folder.iterdir():
            try:
                age = now - path.stat().st_mtime
            except OSError:
                continue
            if path.suffix == ".tmp" and age > STALE_TEMP_SECONDS:
                path.unlink(missing_ok=True)
            elif path.suffix == ".npz" and age > self.keep_seconds:
                self.delete(path.stem)
                removed += 1
        return removed

    def _summary(self, path: Path) -> dict | None:
        try:
            with np.load(path, allow_pickle=False) as record:
                meta = _checked_meta(record["meta"])
            if meta["id"] != path.stem:
                raise ValueError("its id is not its file name")
            return _without_steps(meta)
        except RECORD_ERRORS as error:  # the server starts without it
            log.warning(f"skipping saved session {path.name}: unreadable ({type(error).__name__}: {error})")
            return None


class RecordWriter:
    """One background thread running saves; a session's newest pending save replaces an older one
    (the futures of both are done when it is written, or hold its error)."""

    def __init__(self) -> None:
        self._pending: dict[str, tuple[Callable[[], None], list[Future]]] = {}
        self._busy: str | None = None
        self._stopped = False
        self._changed = threading.Condition()
        self.saves = 0
        self.seconds = 0.0  # spent saving, in all
        self._thread = threading.Thread(target=self._run, name="fastsam3d-records", daemon=True)
        self._thread.start()

    def submit(self, key: str, save: Callable[[], None]) -> Future:
        """Run ``save`` soon; the future is done once this or a newer save of ``key`` ran."""
        done: Future = Future()
        with self._changed:
            waiting = self._pending.pop(key, (None, []))[1]
            self._pending[key] = (save, [*waiting, done])
            self._changed.notify_all()
        return done

    def statistics(self) -> dict:
        """Records written so far and their mean time in ms (the CPU and disk a change costs)."""
        with self._changed:
            return {"written": self.saves, "mean_ms": round(1e3 * self.seconds / max(self.saves, 1), 1)}

    def cancel(self, key: str) -> None:
        """Drop a pending save and wait for a running one (before its record is deleted)."""
        with self._changed:
            for waiting in self._pending.pop(key, (None, []))[1]:
                waiting.set_result(None)
            self._changed.wait_for(lambda: self._busy != key)

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every submitted save is written; False on timeout."""
        with self._changed:
            return self._changed.wait_for(lambda: not self._pending and self._busy is None, timeout)

    def stop(self) -> None:
        """Write what is pending, then end the thread."""
        self.flush()
        with self._changed:
            self._stopped = True
            self._changed.notify_all()
        self._thread.join()

    def _run(self) -> None:
        while True:
            with self._changed:
                self._changed.wait_for(lambda: self._pending or self._stopped)
                if not self._pending:
                    return
                key = next(iter(self._pending))
                save, waiting = self._pending.pop(key)
                self._busy = key
            started = time.perf_counter()
            failure = None
            try:
                save()
            except Exception as error:  # a failed save must not end the thread; the next change tries again
                log.exception(f"could not save session {key}")
                failure = error
            finally:
                for done in waiting:
                    if failure is None:
                        done.set_result(None)
                    else:  # a caller waiting for the write (--sync-saves) learns that it failed
                        done.set_exception(failure)
                with self._changed:
                    self.saves += 1
                    self.seconds += time.perf_counter() - started
                    self._busy = None
                    self._changed.notify_all()


def _checked_meta(raw: np.ndarray) -> dict:
    meta = json.loads(raw.tobytes().decode())
    if meta.get("format") != FORMAT or meta.get("version") != FORMAT_VERSION:
        raise ValueError(f"not a {FORMAT} record of version {FORMAT_VERSION}")
    return meta


def _step(record, step: dict, shape: tuple[int, ...]) -> SavedStep:
    if step["mask"] is None:
        return SavedStep(step["prompts"], PackedMask(shape))
    box = _box(step["mask"]["box"])
    mask = PackedMask(shape, box, record[step["mask"]["member"]], compressed=True)
    if mask.packed_bits().size != (int(np.prod([s.stop - s.start for s in box])) + 7) // 8:
        raise ValueError(f"step {step['mask']['member']} does not hold its box's bits")
    return SavedStep(step["prompts"], mask)


def _label_crop(objects: tuple[SavedObject, ...]) -> tuple | None:
    """The label map the objects' current steps paint (higher label wins), in its non-zero box."""
    current = [(obj.label, obj.steps[obj.position].mask.region()) for obj in objects]
    current = [(label, region) for label, region in current if region is not None]
    box = union_box(region[0] for _, region in current)
    if box is None:
        return None
    dtype = np.uint8 if max(label for label, _ in current) < 256 else np.uint16
    crop = np.zeros(tuple(s.stop - s.start for s in box), dtype=dtype)
    for label, (piece_box, piece) in current:
        target = tuple(slice(p.start - b.start, p.stop - b.start) for p, b in zip(piece_box, box, strict=True))
        np.maximum(crop[target], np.multiply(piece, label, dtype=dtype), out=crop[target])
    return box, crop


def _compressed(array: np.ndarray) -> np.ndarray:
    return np.frombuffer(zlib.compress(np.ascontiguousarray(array).tobytes(), 1), dtype=np.uint8)


def _box_json(box) -> list[list[int]]:
    return [[int(s.start), int(s.stop)] for s in box]


def _box(rows: list[list[int]]) -> tuple[slice, ...]:
    return tuple(slice(int(a), int(b)) for a, b in rows)


def _without_steps(meta: dict) -> dict:
    objects = [{"label": o["label"], "name": o["name"]} for o in meta["objects"]]
    return {key: value for key, value in meta.items() if key != "objects"} | {"objects": objects}


def _sync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable (where the system allows opening a folder)."""
    try:
        handle = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(handle)
    except OSError:
        pass
    finally:
        os.close(handle)
