"""The REST API and the web viewer (``fastsam3d serve``).

Every interaction answers with the box of the label map it changed and that box's labels
(``zlib`` + base64, i fastest as in NIfTI), never the whole volume, plus the stage timings.
OpenAPI docs at ``/docs``; the viewer at ``/``.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
import uuid
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from fastapi import APIRouter, FastAPI, File, Request, Security, UploadFile
from fastapi.responses import FileResponse, JSONResponse
from fastapi.security import APIKeyHeader
from fastapi.staticfiles import StaticFiles

from .. import __version__
from ..engine.strokes import from_slice_mask
from ..errors import FastSAM3DError, PromptError, VolumeError
from ..io import align_label, write_volume
from .files import CHUNK, UPLOAD_SUFFIXES, display_name
from .guard import RequestGuard
from .interactions import interact, undo_or_redo
from .protocol import (
    STREAM_DESCRIPTION,
    AnySession,
    BoxRequest,
    ClickRequest,
    ObjectRef,
    ObjectRequest,
    OpenRequest,
    StrokeRequest,
    UncertaintyRequest,
    decode_bits,
    describe_objects,
    describe_session,
    encode_region,
    status_code,
)
from .settings import ServerSettings
from .store import ServerSession, SessionStore, UnknownSessionError
from .worker import Job, SessionBusyError, SessionWorker, all_or_nothing

STATIC_DIR = Path(__file__).parent / "static"
log = logging.getLogger(__name__)


def create_app(settings: ServerSettings, model: torch.nn.Module | None = None) -> FastAPI:
    """The FastAPI application; the model (``settings.model``, or ``model`` when given) is loaded once."""
    store = SessionStore(settings, model)
    worker = SessionWorker(settings.parallel_jobs, settings.request_seconds)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        expiry = asyncio.create_task(_expire_idle(store))
        leases = asyncio.create_task(_renew_leases(store))
        yield
        expiry.cancel()
        leases.cancel()
        worker.shutdown()  # running work stops at its next step
        store.close_all()  # remove every session's temporary files

    app = FastAPI(
        title="fastsam3d", version=__version__, description=__doc__, lifespan=lifespan, docs_url=None, redoc_url=None
    )  # /docs is a packaged page below (no CDN)
    app.state.store = store
    app.add_middleware(
        RequestGuard,
        allowed_hosts=settings.allowed_hosts,
        api_key=settings.api_key,
        upload_bytes=int(settings.max_upload_mb * 2**20),
    )
    api = APIRouter(
        prefix="/api",
        dependencies=[
            Security(
                APIKeyHeader(name="X-API-Key", auto_error=False, description="required when the server has an API key")
            )
        ],
    )

    @app.exception_handler(FastSAM3DError)
    def _user_error(request: Request, error: FastSAM3DError) -> JSONResponse:
        return JSONResponse({"detail": store.scrub(str(error))}, status_code=status_code(error))

    async def lookup(session_id: str) -> ServerSession:
        """The open session with this id; a saved one is reopened first (after a restart, or on
        another replica)."""
        try:
            return store.get(session_id)
        except UnknownSessionError:
            if not store.is_saved(session_id):
                raise
        return await worker.open(lambda: store.reopen(session_id))

    @api.get("/health")
    async def health() -> dict:
        return {
            "status": "ok",
            "version": __version__,
            "model": settings.model,
            "sessions": len(store),
            "max_sessions": settings.max_sessions,
            "feature_cache_mb": round(store.features.total_bytes() / 2**20, 1),
            **({"saves": store.writer.statistics()} if store.writer is not None else {}),
        }

    @api.get("/models")
    async def models() -> dict:
        """Every model a session can be opened with (``dims`` 2 or 3, the ``prompts`` it takes) and
        whether its weights are on this server (``available``)."""
        return {"default": settings.model, "models": await asyncio.to_thread(store.models.offered)}

    @api.get("/files")
    async def files() -> dict:
        return {"files": await worker.open(store.data.files)}

    @api.post("/sessions")
    async def open_path(request: OpenRequest) -> dict:
        return describe_session(await worker.open(lambda: store.open_path(request.path, request.model)))

    @api.post("/sessions/upload")
    async def open_upload(file: UploadFile = File(...), model: str | None = None) -> dict:
        return describe_session(await worker.open(lambda: store.open_upload(file.file, file.filename, model)))

    @api.get("/sessions")
    async def sessions() -> dict:
        """Open and saved sessions (most recently changed first): id, image name, model, objects,
        ``updated`` (last change, seconds since 1970) and whether it is ``open`` in memory."""
        return {"sessions": store.sessions()}

    @api.get("/sessions/{session_id}")
    async def describe(session_id: str) -> dict:
        return describe_session(await lookup(session_id))

    @api.post("/sessions/{session_id}/heartbeat")
    async def heartbeat(session_id: str) -> dict:
        await lookup(session_id)
        return {"status": "ok"}

    @api.delete("/sessions/{session_id}")
    async def close(session_id: str) -> dict:
        """Close the session and delete its saved record."""
        await asyncio.to_thread(store.close, session_id)
        return {"closed": session_id}

    @api.get("/sessions/{session_id}/image.nii.gz")
    async def image(session_id: str) -> FileResponse:
        entry = await lookup(session_id)
        path = entry.folder / "image.nii.gz"

        def write(session: AnySession, job: Job) -> None:
            if not path.exists():
                write_volume(session.volume, path)

        await worker.run(entry, write)
        return FileResponse(path, media_type="application/gzip", filename="image.nii.gz")

    @api.post("/sessions/{session_id}/objects")
    async def add_object(session_id: str, request: ObjectRequest) -> dict:
        entry = await lookup(session_id)

        def work(session: AnySession, job: Job) -> dict:
            with session.transaction():  # cancelled, or not saved with --sync-saves: no new object
                label = session.add_object(request.name)
                if not job.commit():
                    raise SessionBusyError("cancelled")
                store.save(entry)
            return {"object": label, "objects": describe_objects(session)}

        return await worker.run(entry, work)

    @api.post("/sessions/{session_id}/clicks", description=STREAM_DESCRIPTION)
    async def clicks(session_id: str, request: ClickRequest, stream: bool = False):
        """Add clicks as one interaction (one undo step, one model pass), all or none: every point
        is checked before any is applied."""
        entry = await lookup(session_id)
        if len(request.points) > settings.max_points:
            raise PromptError(
                f"{len(request.points)} points in one request; this server accepts at most {settings.max_points}"
            )
        signs = request.positive if isinstance(request.positive, list) else [request.positive] * len(request.points)
        if len(signs) != len(request.points) or any(len(p) != 3 for p in request.points):
            raise PromptError("give three coordinates per point and one 'positive' per point (or one for all)")

        def action(session: AnySession, job: Job):
            indices = [session.to_index(p, request.coordinates) for p in request.points]
            return all_or_nothing(session, [partial(session.add_clicks, indices, signs, label=request.object)], job)

        return await interact(worker, store, entry, action, stream=stream)

    @api.post("/sessions/{session_id}/box", description=STREAM_DESCRIPTION)
    async def box(session_id: str, request: BoxRequest, stream: bool = False):
        """A box from two opposite corners. 2D models: a box on one slice segments it and propagates
        up and down until the object ends. 3D models: a box on one slice gets a depth equal to the
        mean of its in-plane sides in mm (centred on that slice)."""
        entry = await lookup(session_id)

        def action(session: AnySession, job: Job):
            corners = [session.to_index(c, request.coordinates) for c in (request.corner_a, request.corner_b)]
            return all_or_nothing(session, [partial(session.set_box, *corners, label=request.object)], job)

        return await interact(worker, store, entry, action, stream=stream)

    @api.post("/sessions/{session_id}/scribble", description=STREAM_DESCRIPTION)
    async def scribble(session_id: str, request: StrokeRequest, stream: bool = False):
        """A scribble (a polyline of points, or the pixels drawn on one slice) as one interaction."""
        return await _stroke(await lookup(session_id), "scribble", request, stream)

    @api.post("/sessions/{session_id}/lasso", description=STREAM_DESCRIPTION)
    async def lasso(session_id: str, request: StrokeRequest, stream: bool = False):
        """A lasso (a closed polygon on one slice, or its drawn pixels) as one interaction."""
        return await _stroke(await lookup(session_id), "lasso", request, stream)

    async def _stroke(entry: ServerSession, kind: str, request: StrokeRequest, stream: bool):
        if (request.points is None) == (request.bits is None):
            raise PromptError(f"give the {kind} as 'points' or as 'bits', one of the two")
        plane = None if request.bits is None else decode_bits(request.bits, settings.max_stroke_pixels)

        def action(session: AnySession, job: Job):
            if plane is None:
                verb = session.add_scribble if kind == "scribble" else session.add_lasso
                step = partial(verb, request.points, request.positive, frame=request.coordinates, label=request.object)
            else:
                bits = request.bits
                stroke = from_slice_mask(
                    kind, request.positive, bits.axis, bits.index, bits.origin, plane, session.volume.shape
                )
                step = partial(session.add_stroke, stroke, label=request.object)
            return all_or_nothing(session, [step], job)

        return await interact(worker, store, entry, action, stream=stream)

    @api.post("/sessions/{session_id}/mask")
    async def initial_mask(session_id: str, file: UploadFile = File(...), object: int | None = None) -> dict:
        """Start an object from a mask file on the image's voxels (any non-zero voxel is inside)."""
        entry = await lookup(session_id)
        mask = await worker.open(lambda: _read_mask(store, entry, file))
        return await interact(
            worker,
            store,
            entry,
            lambda session, job: all_or_nothing(session, [partial(session.set_mask, mask, label=object)], job),
        )

    @api.post("/sessions/{session_id}/undo")
    async def undo(session_id: str, request: ObjectRef) -> dict:
        entry = await lookup(session_id)
        return await interact(
            worker, store, entry, lambda s, job: undo_or_redo(s, request.object, -1, job), report="changed"
        )

    @api.post("/sessions/{session_id}/redo")
    async def redo(session_id: str, request: ObjectRef) -> dict:
        entry = await lookup(session_id)
        return await interact(
            worker, store, entry, lambda s, job: undo_or_redo(s, request.object, +1, job), report="changed"
        )

    @api.post("/sessions/{session_id}/reset")
    async def reset(session_id: str, request: ObjectRef) -> dict:
        return await interact(
            worker,
            store,
            await lookup(session_id),
            lambda session, job: all_or_nothing(session, [partial(session.reset, request.object)], job),
        )

    @api.post("/sessions/{session_id}/uncertainty")
    async def uncertainty(session_id: str, request: UncertaintyRequest) -> dict:
        started = time.perf_counter()

        def work(session: AnySession, job: Job) -> dict:
            result = session.uncertainty(samples=request.samples, label=request.object)
            quantised = np.clip(np.rint(result.entropy * 255), 0, 255).astype(np.uint8)  # bits in [0, 1]
            return {"region": encode_region(result.box, quantised), "scale": 1 / 255, "unit": "bits"}

        answer = await worker.run(await lookup(session_id), work)
        return answer | {"timings_ms": {"total": 1e3 * (time.perf_counter() - started)}}

    @api.get("/sessions/{session_id}/labels")
    async def labels(session_id: str, format: Literal["nii.gz", "nrrd", "dcm"] = "nii.gz") -> FileResponse:
        entry = await lookup(session_id)
        path = entry.folder / f"labels.{format}"

        def export(session: AnySession, job: Job) -> None:
            if format == "dcm":
                if entry.dicom_dir is None:
                    raise FastSAM3DError("DICOM-SEG export needs a session opened from a DICOM series")
                from .dicom_seg import write_dicom_seg

                names = {label: obj.name for label, obj in session.objects.items()}
                write_dicom_seg(session.label_map(), session.volume, entry.dicom_dir, names, path)
            else:
                session.save_labels(path)

        await worker.run(entry, export)
        media = {"nii.gz": "application/gzip", "nrrd": "application/octet-stream", "dcm": "application/dicom"}[format]
        return FileResponse(path, media_type=media, filename=f"{Path(entry.name).name.split('.')[0]}-labels.{format}")

    app.include_router(api)

    @app.get("/docs", include_in_schema=False)
    async def docs() -> FileResponse:
        return FileResponse(STATIC_DIR / "docs.html", media_type="text/html")

    if STATIC_DIR.is_dir():
        app.mount("/", StaticFiles(directory=STATIC_DIR, html=True), name="viewer")
    return app


async def _expire_idle(store: SessionStore) -> None:
    """Close idle sessions in the background (not only when a request looks one up); delete saved
    sessions older than ``keep_days``."""
    interval = min(60.0, max(1.0, store.settings.idle_seconds / 10))
    while True:
        await asyncio.sleep(interval)
        await asyncio.to_thread(store.expire)
        if store.records is not None:
            await asyncio.to_thread(store.records.remove_old)


async def _renew_leases(store: SessionStore) -> None:
    """Keep this server's leases on its open sessions (a state folder shared by replicas)."""
    while store.leases is not None:
        await asyncio.sleep(store.leases.seconds / 3)
        await asyncio.to_thread(store.renew_leases)


def _read_mask(store: SessionStore, entry: ServerSession, file: UploadFile) -> np.ndarray:
    """An uploaded mask, checked and aligned to the session's image (voxels > 0 are inside)."""
    name = display_name(file.filename, "mask.nii.gz")
    suffix = next((s for s in UPLOAD_SUFFIXES[:-1] if (file.filename or name).lower().endswith(s)), None)
    if suffix is None:
        raise VolumeError("upload the mask as a .nii.gz, .nii, .nrrd or .mha file")
    path = entry.folder / f"mask-{uuid.uuid4().hex}{suffix}"
    try:
        with open(path, "wb") as sink:
            shutil.copyfileobj(file.file, sink, CHUNK)
        return align_label(entry.session.volume, store.read(path, name), "the image", name).array > 0
    finally:
        path.unlink(missing_ok=True)
