"""One writer per saved session when several servers share a state folder (replicas).

A server holds a session while ``<id>.lease`` in the state folder names it and has not expired;
it renews its leases every third of their lifetime. A server that dies stops renewing, so after at
most ``seconds`` another one may take the session over (it reopens the session from its record);
on the same machine at once, when the holder's process is gone (a restart after a crash).
Reading and writing a lease happen under a POSIX lock (``fcntl.lockf``) on ``.leases.lock``, so two
servers never both take the same lease.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path

from ..errors import FastSAM3DError

HOST = socket.gethostname()


class SessionElsewhereError(FastSAM3DError):
    """Another server holds the session (its lease has not expired)."""


class Leases:
    """This server's leases on sessions in ``folder``."""

    def __init__(self, folder: Path, seconds: float) -> None:
        self.folder = folder
        self.seconds = seconds
        self.owner = uuid.uuid4().hex  # this server

    def acquire(self, session_id: str) -> None:
        """Hold the session; raises :class:`SessionElsewhereError` while another server holds it."""
        with self._guard():
            holder = self._read(session_id)
            if holder is not None and holder["owner"] != self.owner and _alive(holder):
                wait = holder["expires"] - time.time()
                raise SessionElsewhereError(
                    f"session {session_id} is open on another server (free in {wait:.0f} s if that one stopped)"
                )
            self._write(session_id)

    def owns(self, session_id: str) -> bool:
        """Whether the lease still names this server (another may have taken it after it expired)."""
        holder = self._read(session_id)
        return holder is not None and holder["owner"] == self.owner

    def renew(self, session_ids: Iterable[str]) -> list[str]:
        """Extend this server's leases; returns the sessions whose lease another server took."""
        lost = []
        with self._guard():
            for session_id in session_ids:
                if self.owns(session_id):
                    self._write(session_id)
                else:
                    lost.append(session_id)
        return lost

    def release(self, session_id: str) -> None:
        """Give the session up (closed or idle) so another server may take it at once."""
        with self._guard():
            if self.owns(session_id):
                self._path(session_id).unlink(missing_ok=True)

    def _path(self, session_id: str) -> Path:
        return self.folder / f"{session_id}.lease"

    def _read(self, session_id: str) -> dict | None:
        try:
            holder = json.loads(self._path(session_id).read_text())
            return holder if isinstance(holder, dict) and {"owner", "expires"} <= holder.keys() else None
        except (OSError, ValueError):
            return None  # none, or a torn one: free

    def _write(self, session_id: str) -> None:
        path = self._path(session_id)
        temp = path.with_name(f".{path.name}-{self.owner[:8]}.tmp")
        holder = {"owner": self.owner, "expires": time.time() + self.seconds, "host": HOST, "pid": os.getpid()}
        temp.write_text(json.dumps(holder))
        os.replace(temp, path)

    @contextlib.contextmanager
    def _guard(self) -> Iterator[None]:
        handle = os.open(self.folder / ".leases.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.lockf(handle, fcntl.LOCK_EX)
            yield
        finally:
            os.close(handle)  # closing drops the lock


def _alive(holder: dict) -> bool:
    """Whether a lease still binds: not expired, and on this machine its process still runs."""
    if holder["expires"] <= time.time():
        return False
    if holder.get("host") != HOST or not isinstance(holder.get("pid"), int):
        return True
    try:
        os.kill(holder["pid"], 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # it runs, as another user
    return True
