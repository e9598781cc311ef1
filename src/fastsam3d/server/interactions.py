"""One interaction run as its session's job: the answer (the changed region, the objects, the
stage timings), the session saved after a change, and for 2D models the progress of each slice,
streamed as NDJSON on request."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from functools import partial

from fastapi.responses import StreamingResponse

from ..engine.answers import Interaction, Progress, Timings
from ..engine.session2d import SliceSession
from ..errors import FastSAM3DError
from ..io import drop_mapped_pages
from .protocol import AnySession, describe_objects, encode_region, status_code
from .store import ServerSession, SessionStore
from .worker import Job, SessionBusyError, SessionWorker

log = logging.getLogger(__name__)


def undo_or_redo(session: AnySession, label: int | None, step: int, job: Job) -> Interaction | None:
    """Undo (-1) or redo (+1), taken back when the request was cancelled meanwhile."""
    move, back = (session.undo, session.redo) if step < 0 else (session.redo, session.undo)
    changed = move(label)
    if not job.commit():
        if changed:
            back(label)
        raise SessionBusyError("cancelled")
    return changed


async def interact(
    worker: SessionWorker, store: SessionStore, entry: ServerSession, action, report: str = "", stream: bool = False
):
    """Run one interaction as the session's job and save the session; answer with the changed
    region and timings (with ``stream``, as a stream of progress events ending in the answer)."""
    started = time.perf_counter()

    def work(session: AnySession, job: Job) -> dict:
        with session.transaction():  # a change that --sync-saves cannot save is rolled back
            result = action(session, job)  # an Interaction; None: nothing to undo / redo
            if result is not None:
                store.save(entry)
        region = result.changed_region if result is not None else None
        timings = result.timings if result is not None else Timings()
        if timings.encoder:
            drop_mapped_pages(session.volume.array)  # the slices a 2D model read (3D crops release theirs slab by slab)
        answer = {
            "object": session.active,
            "objects": describe_objects(session),
            "region": encode_region(region, session.labels[region]) if region else None,
            "timings_ms": {
                "encoder": 1e3 * timings.encoder,
                "decoder": 1e3 * timings.decoder,
                "paste": 1e3 * timings.paste,
            },
        }
        if timings.slices:
            answer["slices"] = timings.slices
        if report:
            answer[report] = result is not None
        return answer

    if stream:
        return _streamed(worker, entry, work, started, store.scrub)
    answer = await worker.run(entry, partial(_reporting, work, None))
    answer["timings_ms"]["server"] = 1e3 * (time.perf_counter() - started)
    return answer


def _reporting(work, send, session: AnySession, job: Job):
    """Run ``work`` with the 2D session's progress hook set: each slice renews the job's deadline
    (and, with ``send``, is sent as a progress event); a cancelled job stops at the next slice."""
    if not isinstance(session, SliceSession):
        return work(session, job)

    def report(progress: Progress) -> None:
        if job.cancelled:
            raise SessionBusyError("cancelled")
        job.progressed = time.monotonic()  # the event loop's clock
        if send is not None:
            region = encode_region(progress.region, progress.values) if progress.region is not None else None
            send({"event": "progress", "done": progress.done, "total": progress.total, "region": region})

    session.progress = report
    try:
        return work(session, job)
    finally:
        session.progress = None


def _streamed(worker: SessionWorker, entry: ServerSession, work, started: float, scrub) -> StreamingResponse:
    """The job's progress events (2D propagation) as NDJSON lines, then its answer or error."""
    loop = asyncio.get_running_loop()
    events: asyncio.Queue[dict] = asyncio.Queue()

    def send(event: dict) -> None:
        loop.call_soon_threadsafe(events.put_nowait, event)

    async def lines():
        task = asyncio.ensure_future(worker.run(entry, partial(_reporting, work, send)))
        task.add_done_callback(lambda done: done.cancelled() or done.exception())  # a gone client's answer
        while True:
            getter = asyncio.ensure_future(events.get())
            await asyncio.wait({task, getter}, return_when=asyncio.FIRST_COMPLETED)
            if getter.done():
                yield json.dumps(getter.result()) + "\n"
                continue
            getter.cancel()
            while not events.empty():
                yield json.dumps(events.get_nowait()) + "\n"
            try:
                answer = task.result()
            except FastSAM3DError as error:
                yield json.dumps({"event": "error", "detail": scrub(str(error)), "status": status_code(error)}) + "\n"
                return
            except Exception:  # a bug: logged; the client gets an ending line, not a cut stream
                log.exception("streamed interaction failed")
                yield json.dumps({"event": "error", "detail": "internal server error", "status": 500}) + "\n"
                return
            answer["timings_ms"]["server"] = 1e3 * (time.perf_counter() - started)
            yield json.dumps({"event": "result", **answer}) + "\n"
            return

    return StreamingResponse(lines(), media_type="application/x-ndjson")
