"""The wire format of the REST API: the request schemas, the changed region of an answer (zlib +
base64, i fastest as in NIfTI) and its inverse, drawn bit crops, the session and object
descriptions, and the HTTP status of each error."""

from __future__ import annotations

import base64
import zlib

import numpy as np
import torch
from pydantic import BaseModel, Field

from ..engine.base import Frame
from ..engine.session2d import SliceSession
from ..engine.session3d import Session
from ..errors import FastSAM3DError, PromptError
from .lease import SessionElsewhereError
from .store import SaveError, ServerSession, SessionLimitError, UnknownSessionError
from .worker import SessionBusyError

AnySession = Session | SliceSession
STREAM_DESCRIPTION = (
    "stream=true answers application/x-ndjson: one JSON object per line, {event: 'progress', done, total, region} "
    "after each slice a 2D model segments (region: that slice's label values, as in the answer), then "
    "{event: 'result', ...the answer...} or {event: 'error', detail, status}"
)


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
    coordinates: Frame = Field("voxel", description="voxel index (i, j, k) or world mm (LPS or RAS)")


class BoxRequest(ObjectRef):
    corner_a: list[float] = Field(min_length=3, max_length=3)
    corner_b: list[float] = Field(min_length=3, max_length=3)
    coordinates: Frame = Field("voxel", description="voxel index (i, j, k) or world mm (LPS or RAS)")


class SliceBits(BaseModel):
    axis: int = Field(ge=0, le=2, description="the input axis the slice lies across")
    index: int = Field(ge=0, description="the slice's index along that axis")
    origin: list[int] = Field(min_length=2, max_length=2, description="the crop's low corner on the other two axes")
    shape: list[int] = Field(min_length=2, max_length=2, description="the crop's size on the other two axes")
    data: str = Field(description="base64 of zlib of numpy.packbits of the crop's pixels, row-major (C order)")


class StrokeRequest(ObjectRef):
    points: list[list[float]] | None = Field(None, description="the stroke's points (three numbers each)")
    bits: SliceBits | None = Field(None, description="or the drawn pixels on one slice, as a bit crop")
    positive: bool = Field(True, description="include (true) or exclude")
    coordinates: Frame = Field("voxel", description="frame of the points: voxel index or world mm (LPS or RAS)")


class UncertaintyRequest(ObjectRef):
    samples: int = Field(16, ge=1, le=128)


def decode_bits(bits: SliceBits, max_pixels: int) -> np.ndarray:
    """A request's bit crop as a boolean 2D array, its size checked before it is inflated."""
    rows, cols = bits.shape
    if rows < 1 or cols < 1 or rows * cols > max_pixels:
        raise PromptError(f"a drawn crop of {rows} x {cols} pixels; this server accepts 1 to {max_pixels}")
    try:
        packed = zlib.decompressobj().decompress(base64.b64decode(bits.data, validate=True), (rows * cols + 7) // 8 + 1)
    except (ValueError, zlib.error):
        raise PromptError("the drawn crop's data is not base64 of zlib-compressed bits") from None
    if len(packed) != (rows * cols + 7) // 8:
        raise PromptError(f"the drawn crop's data holds {len(packed) * 8} bits, not the {rows * cols} of its shape")
    return np.unpackbits(np.frombuffer(packed, dtype=np.uint8), count=rows * cols).reshape(rows, cols).astype(bool)


def status_code(error: FastSAM3DError) -> int:
    return {
        UnknownSessionError: 404,
        SessionElsewhereError: 409,
        SessionLimitError: 429,
        SessionBusyError: 503,
        SaveError: 503,
    }.get(type(error), 400)


def encode_region(box, crop: np.ndarray) -> dict:
    """The values ``crop`` of a box of the volume as zlib + base64, i fastest (NIfTI order). The
    reordering runs in torch: numpy's ``tobytes(order="F")`` of a strided crop took 25 ms of a
    ROI-sized answer's 39 ms here, torch's transpose 11 ms, with the same bytes."""
    dtype = np.uint8 if crop.size == 0 or int(crop.max()) < 256 else np.uint16
    signed = np.ascontiguousarray(crop, dtype=dtype).view(np.int16 if dtype == np.uint16 else np.uint8)  # torch's types
    values = torch.from_numpy(signed).permute(*reversed(range(crop.ndim)))
    data = zlib.compress(values.contiguous().numpy().tobytes(), 1)
    return {
        "start": [s.start for s in box],
        "stop": [s.stop for s in box],
        "dtype": np.dtype(dtype).name,
        "order": "F",
        "encoding": "zlib+base64",
        "data": base64.b64encode(data).decode(),
    }


def describe_objects(session: AnySession) -> list[dict]:
    return [
        {"label": label, "name": obj.name, "volume_ml": round(session.volume_ml(label), 3)}
        for label, obj in session.objects.items()
    ]


def describe_session(entry: ServerSession) -> dict:
    volume = entry.session.volume
    dims = 2 if isinstance(entry.session, SliceSession) else 3
    return {
        "id": entry.id,
        "name": entry.name,
        "model": entry.model,
        "dims": dims,
        "shape": list(volume.shape),
        "spacing": volume.spacing.tolist(),
        "origin": volume.origin.tolist(),
        "direction": volume.direction.tolist(),
        "orientation": volume.orientation,
        "dicom": entry.dicom_dir is not None,
        "objects": describe_objects(entry.session),
        "intensity": list(entry.intensity),
    }


def decode_region(region: dict) -> tuple[tuple[slice, slice, slice], np.ndarray]:
    """Inverse of the answer's ``region`` encoding (for Python clients and tests)."""
    shape = tuple(b - a for a, b in zip(region["start"], region["stop"], strict=True))
    raw = zlib.decompress(base64.b64decode(region["data"]))
    values = np.frombuffer(raw, dtype=region["dtype"]).reshape(shape, order="F")
    return tuple(slice(a, b) for a, b in zip(region["start"], region["stop"], strict=True)), values
