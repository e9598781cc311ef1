"""The REST API and the web viewer (``fastsam3d serve``).

Every interaction answers with the box of the label map it changed and that box's labels
(``zlib`` + base64, i fastest as in NIfTI), never the whole volume, plus the stage timings.
OpenAPI docs at ``/docs``; the viewer at ``/``.
"""

from __future__ import annotations

import base64
import hmac
import shutil
import time
import zlib
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from fastapi import Depends, FastAPI, File, Header, HTTPException, Request, UploadFile
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field

from .. import __version__
from ..errors import FastSAM3DError, PromptError
from ..io import write_volume
from .store import ServerSession, ServerSettings, SessionLimitError, SessionStore, UnknownSessionError, new_upload_folder

STATIC_DIR = Path(__file__).parent / "static"
CHUNK = 1 << 20


class OpenRequest(BaseModel):
    path: str = Field(description="a volume (file or DICOM folder) relative to the server's data folder")
    model: str | None = Field(None, description="one of GET /api/models; default the server's model")


class ObjectRequest(BaseModel):
    name: str | None = None


class ObjectRef(BaseModel):
    object: int | None = Field(None, description="object label; default the active object")


class ClickRequest(ObjectRef):
    points: list[list[float]] = Field(min_length=1, description="one or more points, each three numbers")
    positive: list[bool] | bool = Field(True, description="include (true) or exclude, per point or for all")
    coordinates: Literal["voxel", "lps", "ras"] = Field("voxel", description="voxel index (i, j, k) or world mm")


class BoxRequest(ObjectRef):
    corner_a: list[float] = Field(min_length=3, max_length=3)
    corner_b: list[float] = Field(min_length=3, max_length=3)
    coordinates: Literal["voxel", "lps", "ras"] = Field("voxel", description="voxel index (i, j, k) or world mm")


class UncertaintyRequest(ObjectRef):
    samples: int = Field(16, ge=1, le=128)


def create_app(settings: ServerSettings, model: torch.nn.Module | None = None) -> FastAPI:
    """The FastAPI application; the model (``settings.model``, or ``model`` when given) is loaded once."""
    store = SessionStore(settings, model)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        store.close_all()  # remove every session's temporary files

    app = FastAPI(title="fastsam3d", version=__version__, description=__doc__, lifespan=lifespan)
    app.state.store = store

    def check_key(x_api_key: str | None = Header(None, description="required when the server has an API key")):
        if settings.api_key and not (x_api_key and hmac.compare_digest(x_api_key, settings.api_key)):
            raise HTTPException(401, "missing or wrong API key (header X-API-Key)")

    api = Depends(check_key)

    @app.exception_handler(FastSAM3DError)
    def _user_error(request: Request, error: FastSAM3DError) -> JSONResponse:
        status = 404 if isinstance(error, UnknownSessionError) else 429 if isinstance(error, SessionLimitError) else 400
        return JSONResponse({"detail": str(error)}, status_code=status)

    @app.get("/api/health", dependencies=[api])
    def health() -> dict:
        return {"status": "ok", "version": __version__, "model": settings.model, "sessions": len(store),
                "max_sessions": settings.max_sessions}

    @app.get("/api/models", dependencies=[api])
    def models() -> dict:
        return {"default": settings.model, "models": store.available_models()}

    @app.get("/api/files", dependencies=[api])
    def files() -> dict:
        return {"files": store.data_files()}

    @app.post("/api/sessions", dependencies=[api])
    def open_path(request: OpenRequest) -> dict:
        return _describe(store.open_path(request.path, request.model))

    @app.post("/api/sessions/upload", dependencies=[api])
    def open_upload(request: Request, file: UploadFile = File(...), model: str | None = None) -> dict:
        limit = settings.max_upload_mb * 2**20
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limit + CHUNK:
            raise HTTPException(413, f"upload larger than {settings.max_upload_mb:.0f} MB")
        name = Path(file.filename or "upload.nii.gz").name
        if not name.lower().endswith((".nii.gz", ".nii", ".nrrd", ".mha", ".zip")):
            raise HTTPException(400, "upload a .nii.gz, .nii, .nrrd, .mha file or a .zip of a DICOM series")
        folder = new_upload_folder()
        size = 0
        with open(folder / name, "wb") as sink:
            while chunk := file.file.read(CHUNK):
                size += len(chunk)
                if size > limit:
                    sink.close()
                    shutil.rmtree(folder, ignore_errors=True)
                    raise HTTPException(413, f"upload larger than {settings.max_upload_mb:.0f} MB")
                sink.write(chunk)
        return _describe(store.open_upload(folder, name, model))

    @app.get("/api/sessions/{session_id}", dependencies=[api])
    def describe(session_id: str) -> dict:
        return _describe(store.get(session_id))

    @app.post("/api/sessions/{session_id}/heartbeat", dependencies=[api])
    def heartbeat(session_id: str) -> dict:
        store.get(session_id)
        return {"status": "ok"}

    @app.delete("/api/sessions/{session_id}", dependencies=[api])
    def close(session_id: str) -> dict:
        store.close(session_id)
        return {"closed": session_id}

    @app.get("/api/sessions/{session_id}/image.nii.gz", dependencies=[api])
    def image(session_id: str) -> FileResponse:
        entry = store.get(session_id)
        path = entry.folder / "image.nii.gz"
        with entry.lock:
            if not path.exists():
                write_volume(entry.session.volume, path)
        return FileResponse(path, media_type="application/gzip", filename="image.nii.gz")

    @app.post("/api/sessions/{session_id}/objects", dependencies=[api])
    def add_object(session_id: str, request: ObjectRequest) -> dict:
        entry = store.get(session_id)
        with entry.lock:
            label = entry.session.add_object(request.name)
        return {"object": label, "objects": _objects(entry)}

    @app.post("/api/sessions/{session_id}/clicks", dependencies=[api])
    def clicks(session_id: str, request: ClickRequest) -> dict:
        entry = store.get(session_id)
        signs = request.positive if isinstance(request.positive, list) else [request.positive] * len(request.points)
        if len(signs) != len(request.points) or any(len(p) != 3 for p in request.points):
            raise PromptError("give three coordinates per point and one 'positive' per point (or one for all)")
        world = request.coordinates != "voxel"
        return _interact(entry, lambda s: [s.add_click(p, sign, world=world, ras=request.coordinates == "ras", label=request.object)
                                           for p, sign in zip(request.points, signs)])

    @app.post("/api/sessions/{session_id}/box", dependencies=[api])
    def box(session_id: str, request: BoxRequest) -> dict:
        entry = store.get(session_id)
        world, ras = request.coordinates != "voxel", request.coordinates == "ras"

        def action(s):
            corners = [s.to_index(c, world=world, ras=ras) for c in (request.corner_a, request.corner_b)]
            s.set_box(*corners, label=request.object)

        return _interact(entry, action)

    @app.post("/api/sessions/{session_id}/mask", dependencies=[api])
    def initial_mask(session_id: str, file: UploadFile = File(...), object: int | None = None) -> dict:
        """Start an object from a mask file on the image's voxels (any non-zero voxel is inside)."""
        from ..evaluation.datasets import align_label
        from ..io import read_volume

        entry = store.get(session_id)
        name = Path(file.filename or "mask.nii.gz").name
        path = entry.folder / ("mask-" + name)
        try:
            with open(path, "wb") as sink:
                shutil.copyfileobj(file.file, sink, CHUNK)
            mask = align_label(entry.session.volume, read_volume(path), "the image", name).array > 0
        finally:
            path.unlink(missing_ok=True)
        return _interact(entry, lambda s: s.set_mask(mask, label=object))

    @app.post("/api/sessions/{session_id}/undo", dependencies=[api])
    def undo(session_id: str, request: ObjectRef) -> dict:
        return _interact(store.get(session_id), lambda s: s.undo(request.object), report="changed")

    @app.post("/api/sessions/{session_id}/redo", dependencies=[api])
    def redo(session_id: str, request: ObjectRef) -> dict:
        return _interact(store.get(session_id), lambda s: s.redo(request.object), report="changed")

    @app.post("/api/sessions/{session_id}/reset", dependencies=[api])
    def reset(session_id: str, request: ObjectRef) -> dict:
        return _interact(store.get(session_id), lambda s: s.reset(request.object))

    @app.post("/api/sessions/{session_id}/uncertainty", dependencies=[api])
    def uncertainty(session_id: str, request: UncertaintyRequest) -> dict:
        entry = store.get(session_id)
        started = time.perf_counter()
        with entry.lock:
            result = entry.session.uncertainty(samples=request.samples, label=request.object)
        quantised = np.clip(np.rint(result.entropy * 255), 0, 255).astype(np.uint8)  # bits in [0, 1]
        return {"region": _encode(result.box, quantised), "scale": 1 / 255, "unit": "bits",
                "timings_ms": {"total": 1e3 * (time.perf_counter() - started)}}

    @app.get("/api/sessions/{session_id}/labels", dependencies=[api])
    def labels(session_id: str, format: Literal["nii.gz", "nrrd", "dcm"] = "nii.gz") -> FileResponse:
        entry = store.get(session_id)
        path = entry.folder / f"labels.{format}"
        with entry.lock:
            if format == "dcm":
                if entry.dicom_dir is None:
                    raise FastSAM3DError("DICOM-SEG export needs a session opened from a DICOM series")
                from .dicom_seg import write_dicom_seg

                names = {label: obj.name for label, obj in entry.session.objects.items()}
                write_dicom_seg(entry.session.label_map(), entry.session.volume, entry.dicom_dir, names, path)
            else:
                entry.session.save_labels(path)
        media = {"nii.gz": "application/gzip", "nrrd": "application/octet-stream", "dcm": "application/dicom"}[format]
        return FileResponse(path, media_type=media, filename=f"{Path(entry.name).name.split('.')[0]}-labels.{format}")

    if STATIC_DIR.is_dir():
        app.mount("/", StaticFiles(directory=STATIC_DIR, html=True), name="viewer")
    return app


def _interact(entry: ServerSession, action, report: str = "") -> dict:
    """Run one interaction under the session's lock; answer with the changed region and timings."""
    started = time.perf_counter()
    with entry.lock:
        session = entry.session
        result = action(session)
        answer = {
            "object": session.active,
            "objects": _objects(entry),
            "region": _encode(session.changed_region, session.labels[session.changed_region]) if session.changed_region else None,
            "timings_ms": {"encoder": 1e3 * session.timings.encoder, "decoder": 1e3 * session.timings.decoder,
                           "paste": 1e3 * session.timings.paste},
        }
    if report:
        answer[report] = bool(result)
    answer["timings_ms"]["server"] = 1e3 * (time.perf_counter() - started)
    return answer


def _encode(box, crop: np.ndarray) -> dict:
    """The values ``crop`` of a box of the volume as zlib + base64, i fastest (NIfTI order)."""
    dtype = np.uint8 if crop.size == 0 or int(crop.max()) < 256 else np.uint16
    data = zlib.compress(np.asarray(crop, dtype=dtype).tobytes(order="F"), 1)
    return {"start": [s.start for s in box], "stop": [s.stop for s in box], "dtype": np.dtype(dtype).name,
            "order": "F", "encoding": "zlib+base64", "data": base64.b64encode(data).decode()}


def _objects(entry: ServerSession) -> list[dict]:
    return [{"label": label, "name": obj.name} for label, obj in entry.session.objects.items()]


def _describe(entry: ServerSession) -> dict:
    volume = entry.session.volume
    return {"id": entry.id, "name": entry.name, "shape": list(volume.shape), "spacing": volume.spacing.tolist(),
            "origin": volume.origin.tolist(), "direction": volume.direction.tolist(), "orientation": volume.orientation,
            "dicom": entry.dicom_dir is not None, "objects": _objects(entry),
            "intensity": [float(volume.array.min()), float(volume.array.max())]}


def decode_region(region: dict) -> tuple[tuple[slice, slice, slice], np.ndarray]:
    """Inverse of the answer's ``region`` encoding (for Python clients and tests)."""
    shape = tuple(b - a for a, b in zip(region["start"], region["stop"]))
    raw = zlib.decompress(base64.b64decode(region["data"]))
    values = np.frombuffer(raw, dtype=region["dtype"]).reshape(shape, order="F")
    return tuple(slice(a, b) for a, b in zip(region["start"], region["stop"])), values
