"""Session work off the event loop: one job per session at a time, each with a deadline.

The event loop only waits; the work runs in a thread pool sized to the session limit, so a busy
(or stuck) session never blocks ``/api/health`` or another session. A request that cannot get
its session within the deadline, or whose work runs past it, is answered 503; work that changes
a session is cancelled at its next step and rolled back (see :func:`all_or_nothing`).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from ..engine.answers import Interaction, Timings
from ..engine.labelmap import union_box
from ..engine.session3d import Session
from ..errors import FastSAM3DError
from .memory import release
from .store import ServerSession, UnknownSessionError

T = TypeVar("T")
MAX_WAITING = 16  # requests queued on one session before new ones are refused


class SessionBusyError(FastSAM3DError):
    """The session is busy: too many queued requests, or the deadline passed (nothing was applied)."""


class Job:
    """One piece of session work: cancelled by the waiting request, or committed by the work;
    whichever comes first wins, so a reply of 'not applied' is always true."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._state = "running"
        self.progressed = 0.0  # time.monotonic() of the work's last progress (see SessionWorker.run)

    def cancel(self) -> bool:
        """Cancel unless already committed; True when cancelled."""
        with self._lock:
            if self._state == "running":
                self._state = "cancelled"
            return self._state == "cancelled"

    def commit(self) -> bool:
        """Commit unless already cancelled; True when committed."""
        with self._lock:
            if self._state == "running":
                self._state = "committed"
            return self._state == "committed"

    @property
    def cancelled(self) -> bool:
        return self._state == "cancelled"


class SessionWorker:
    """Runs session work in threads with a per-request deadline; opening volumes has its own pool."""

    def __init__(self, threads: int, seconds: float) -> None:
        self.seconds = seconds
        self.pool = ThreadPoolExecutor(max(threads, 1), thread_name_prefix="fastsam3d-session")
        self.open_pool = ThreadPoolExecutor(2, thread_name_prefix="fastsam3d-open")
        self._jobs: set[Job] = set()

    async def run(self, entry: ServerSession, work: Callable[[Session, Job], T]) -> T:
        """``work(session, job)`` under the session's lock, in a thread, within the deadline; work
        that reports progress (``job.progressed``: each slice of a 2D propagation) gets a new
        deadline from each report."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.seconds
        if entry.waiting >= MAX_WAITING:
            raise SessionBusyError(f"{entry.waiting} requests are waiting for this session; try again later")
        entry.waiting += 1
        try:
            await asyncio.wait_for(entry.lock.acquire(), self.seconds)
        except asyncio.TimeoutError:  # the builtin TimeoutError only from Python 3.11
            raise SessionBusyError(
                f"the session stayed busy for {self.seconds:.0f} s; the request was not applied"
            ) from None
        finally:
            entry.waiting -= 1
        if entry.closed:
            self._done(entry, None)
            raise UnknownSessionError(f"no session {entry.id!r} (closed, expired or never opened)")
        job = Job()
        self._jobs.add(job)
        future = loop.run_in_executor(self.pool, work, entry.session, job)
        future.add_done_callback(lambda done: self._done(entry, job, done))
        while True:
            try:
                return await asyncio.wait_for(asyncio.shield(future), max(deadline - loop.time(), 0.1))
            except asyncio.TimeoutError:
                renewed = job.progressed + self.seconds - time.monotonic()
                if renewed > 0:
                    deadline = loop.time() + renewed
                    continue
                if job.cancel():
                    raise SessionBusyError(
                        f"the request took longer than {self.seconds:.0f} s and was not applied"
                    ) from None
                return await future  # committed just in time: its answer stands

    async def open(self, work: Callable[[], T]) -> T:
        """Open a session (read and check a volume) off the event loop."""
        return await asyncio.get_running_loop().run_in_executor(self.open_pool, work)

    def _done(self, entry: ServerSession, job: Job | None, future: asyncio.Future | None = None) -> None:
        if future is not None and not future.cancelled():
            future.exception()  # retrieved: the answer of a cancelled job is nobody's
        self._jobs.discard(job)
        entry.lock.release()
        if entry.closed and not entry.lock.locked() and not entry.waiting:
            threading.Thread(target=release, args=(entry,), daemon=True).start()

    def shutdown(self) -> None:
        """Cancel running work (it stops at its next step) and stop taking new work."""
        for job in list(self._jobs):
            job.cancel()
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.open_pool.shutdown(wait=False, cancel_futures=True)


def all_or_nothing(session: Session, steps: list[Callable[[], Interaction]], job: Job) -> Interaction:
    """Apply prompt steps in order inside one engine transaction, or none of them; returns their
    answers as one (the label-map box they changed together, their summed timings). A cancelled
    job rolls the steps applied so far back, as a failing step does."""
    answers: list[Interaction] = []
    with session.transaction():
        for step in steps:
            if job.cancelled:
                raise SessionBusyError("cancelled")
            answers.append(step())
        if not job.commit():
            raise SessionBusyError("cancelled")
    return Interaction(union_box(a.changed_region for a in answers), sum((a.timings for a in answers), Timings()))
