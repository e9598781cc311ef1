"""FastSAM3D for 3D Slicer: the client logic, free of Qt and Slicer so it is testable anywhere.

It talks to a ``fastsam3d serve`` server over HTTP (standard library only) and keeps the label
map in Slicer's array order (k, j, i). Geometry goes through the volume's full IJK-to-RAS matrix
(world RAS, after parent transforms), so oblique volumes work: the volume is uploaded with that
geometry and every click travels as a RAS point that the server maps to its voxels.
"""

from __future__ import annotations

import base64
import io
import json
import os
import tempfile
import threading
import urllib.error
import urllib.parse
import urllib.request
import uuid
import zlib

import numpy as np

_LPS = np.diag([-1.0, -1.0, 1.0])


class ServerError(RuntimeError):
    """The server answered with an error (its message) or could not be reached."""


class FastSAM3DLogic:
    """One volume, several objects, include/exclude points, boxes, undo/redo, uncertainty."""

    def __init__(self, url: str = "http://127.0.0.1:8000", api_key: str | None = None, timeout: float = 600.0) -> None:
        self.url = url.rstrip("/")
        self.api_key = api_key or None
        self.timeout = timeout
        self.session: dict | None = None
        self.labels: np.ndarray | None = None  # (K, J, I) label map, Slicer's array order
        self.active: int | None = None
        self.objects: list[dict] = []
        self.last_timings: dict = {}

    # --- connection ---------------------------------------------------------------------

    def check(self) -> dict:
        """The server's health answer (model, sessions); raises :class:`ServerError` when unreachable."""
        return self._request("GET", "/api/health")

    def models(self) -> list[dict]:
        """Every model the server lists, its default first: ``{"name", "dims", "prompts", "available",
        "description"}`` (servers that list names only get ``dims`` 3, both prompts, available)."""
        answer = self._request("GET", "/api/models")
        models = [
            {"name": m, "dims": 3, "prompts": ["point", "box"], "available": True, "description": ""}
            if isinstance(m, str)
            else {"dims": 3, "prompts": ["point", "box"], "available": True, "description": "", **m}
            for m in answer.get("models", [])
        ]
        default = answer.get("default")
        return sorted(models, key=lambda m: m["name"] != default)

    def _request(
        self,
        method: str,
        path: str,
        payload: dict | None = None,
        body: bytes | None = None,
        content_type: str | None = None,
        raw: bool = False,
    ):
        headers = {}
        if self.api_key:
            headers["X-API-Key"] = self.api_key
        if payload is not None:
            body = json.dumps(payload).encode()
            content_type = "application/json"
        if content_type:
            headers["Content-Type"] = content_type
        request = urllib.request.Request(self.url + path, data=body, headers=headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                data = response.read()
        except urllib.error.HTTPError as error:
            try:
                detail = json.loads(error.read()).get("detail", error.reason)
            except (ValueError, AttributeError):
                detail = error.reason
            raise ServerError(f"{error.code}: {detail}") from None
        except (urllib.error.URLError, OSError) as error:
            raise ServerError(f"cannot reach the fastsam3d server at {self.url}: {error}") from None
        return data if raw else json.loads(data)

    # --- volume -------------------------------------------------------------------------

    def open_volume(
        self, array_kji: np.ndarray, ijk_to_ras: np.ndarray, name: str = "volume", model: str | None = None
    ) -> dict:
        """Upload a volume (Slicer array order (k, j, i) and its 4x4 IJK-to-RAS matrix); ``model``
        is one of :meth:`models` (default: the server's)."""
        array_kji = np.asarray(array_kji)
        if array_kji.ndim != 3:
            raise ValueError(f"a 3D volume is needed, got an array of shape {array_kji.shape}")
        self.models()  # the key first, with a small request: the server refuses a keyless upload unread
        with tempfile.TemporaryDirectory() as folder:
            path = os.path.join(folder, "volume.nii.gz")
            write_nifti(array_kji, ijk_to_ras, path)
            with open(path, "rb") as handle:
                body, content_type = _multipart("file", f"{name}.nii.gz", handle.read())
        query = "?" + urllib.parse.urlencode({"model": model}) if model else ""
        self._start(
            self._request("POST", f"/api/sessions/upload{query}", body=body, content_type=content_type), array_kji.shape
        )
        return self.session

    def open_path(self, path: str, shape_kji: tuple[int, int, int] | None = None, model: str | None = None) -> dict:
        """Open a volume the server can read itself (a path relative to its data folder)."""
        answer = self._request("POST", "/api/sessions", {"path": path, "model": model})
        self._start(answer, shape_kji or tuple(reversed(answer["shape"])))
        return self.session

    def _start(self, answer: dict, shape_kji) -> None:
        answer.setdefault("dims", 3)
        self.session = answer
        self.labels = np.zeros(shape_kji, dtype=np.uint16)
        self.objects = answer["objects"]
        self.active = None

    def close(self) -> None:
        if self.session is not None:
            try:
                self._request("DELETE", f"/api/sessions/{self.session['id']}")
            finally:
                self.session = None

    # --- prompts --------------------------------------------------------------------------

    def add_object(self, name: str | None = None) -> int:
        answer = self._call("objects", {"name": name})
        self.active = answer["object"]
        self.objects = answer["objects"]
        return self.active

    def click(self, ras, positive: bool = True, label: int | None = None) -> dict:
        """An include (``positive``) or exclude point in world RAS millimetres."""
        return self._apply(
            self._call(
                "clicks",
                {
                    "points": [list(map(float, ras))],
                    "positive": positive,
                    "coordinates": "ras",
                    "object": label or self.active,
                },
            )
        )

    def box(self, ras_a, ras_b, label: int | None = None) -> dict:
        """A 3D box by two opposite corners in world RAS millimetres (e.g. a markups ROI's bounds)."""
        return self._apply(
            self._call(
                "box",
                {
                    "corner_a": list(map(float, ras_a)),
                    "corner_b": list(map(float, ras_b)),
                    "coordinates": "ras",
                    "object": label or self.active,
                },
            )
        )

    def flat_box(
        self, ijk_to_ras: np.ndarray, ras_a, ras_b, depth_mm: float | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Two corners clicked on one slice (world RAS) -> the two RAS corners to send. For a 2D model
        the flat box as is (it segments that slice and propagates); for a 3D model a slab ``depth_mm``
        thick (default: as deep as the rectangle's mean side) centred on the slice, as the web viewer
        and the napari plugin do."""
        return flat_box_corners(
            ijk_to_ras,
            ras_a,
            ras_b,
            self.session.get("dims", 3) if self.session else 3,
            self.labels.shape[::-1] if self.labels is not None else None,
            depth_mm,
        )

    def undo(self, label: int | None = None) -> dict:
        return self._apply(self._call("undo", {"object": label or self.active}))

    def redo(self, label: int | None = None) -> dict:
        return self._apply(self._call("redo", {"object": label or self.active}))

    def reset(self, label: int | None = None) -> dict:
        return self._apply(self._call("reset", {"object": label or self.active}))

    def uncertainty(self, samples: int = 16, label: int | None = None) -> np.ndarray:
        """Per-voxel entropy (bits, 0..1) of the object, (K, J, I) float32, zero outside its region."""
        answer = self._call("uncertainty", {"samples": samples, "object": label or self.active})
        entropy = np.zeros(self.labels.shape, dtype=np.float32)
        box, values = decode_region(answer["region"])
        entropy[box] = values.astype(np.float32) * answer["scale"]
        return entropy

    def _call(self, action: str, payload: dict) -> dict:
        if self.session is None:
            raise ServerError("no volume is open: open one first")
        return self._request("POST", f"/api/sessions/{self.session['id']}/{action}", payload)

    def _apply(self, answer: dict) -> dict:
        """Write the answer's changed region into :attr:`labels`; returns the answer."""
        if answer.get("region"):
            box, values = decode_region(answer["region"])
            self.labels[box] = values
        self.active = answer.get("object", self.active)
        self.objects = answer.get("objects", self.objects)
        self.last_timings = answer.get("timings_ms", {})
        return answer


def segment_region(answer: dict, labels_kji: np.ndarray, label: int):
    """The part of an answer a Segment Editor effect applies to the selected segment: the changed
    box as an inclusive IJK extent ``(i0, i1, j0, j1, k0, k1)`` (what ``modifySelectedSegmentByLabelmap``
    takes) and the object's binary mask inside it, (K, J, I) uint8; None when nothing changed."""
    region = answer.get("region")
    if not region:
        return None
    box = (
        slice(region["start"][2], region["stop"][2]),
        slice(region["start"][1], region["stop"][1]),
        slice(region["start"][0], region["stop"][0]),
    )
    extent = tuple(v for a in range(3) for v in (region["start"][a], region["stop"][a] - 1))
    return extent, (labels_kji[box] == label).astype(np.uint8)


def apply_segment_region(
    segment_kji: np.ndarray,
    extent,
    mask_kji: np.ndarray,
    editable_kji: np.ndarray | None = None,
    others_kji: np.ndarray | None = None,
    overwrite_others: bool = True,
) -> None:
    """What the Segment Editor does with ``modifySelectedSegmentByLabelmap(modifier, Set, extent)``,
    in numpy (the effect calls Slicer's; this is its model for tests): inside ``extent`` only, the
    segment becomes the mask where editing is allowed (``editable``: the masking settings' editable
    area), and, with overwrite, voxels it takes are removed from the other segments."""
    i0, i1, j0, j1, k0, k1 = extent
    box = (slice(k0, k1 + 1), slice(j0, j1 + 1), slice(i0, i1 + 1))
    allowed = np.ones(mask_kji.shape, bool) if editable_kji is None else editable_kji[box].astype(bool)
    if others_kji is not None and not overwrite_others:
        allowed &= ~others_kji[box].astype(bool)
    current = segment_kji[box]
    current[allowed] = mask_kji[allowed]
    if others_kji is not None and overwrite_others:
        others_kji[box][allowed & (mask_kji > 0)] = 0


def flat_box_corners(ijk_to_ras, ras_a, ras_b, dims: int = 3, shape_ijk=None, depth_mm: float | None = None):
    """See :meth:`FastSAM3DLogic.flat_box`. Corners on different slices are returned unchanged."""
    matrix = np.asarray(ijk_to_ras, dtype=np.float64)
    a, b = ras_to_ijk(matrix, ras_a), ras_to_ijk(matrix, ras_b)
    low, high = np.minimum(a, b), np.maximum(a, b)
    flat = [axis for axis in range(3) if round(high[axis]) == round(low[axis])]
    if len(flat) != 1 or dims == 2:
        return np.asarray(ras_a, float), np.asarray(ras_b, float)
    axis = flat[0]
    spacing = np.linalg.norm(matrix[:3, :3], axis=0)
    sides = [(high[o] - low[o]) * spacing[o] for o in range(3) if o != axis]
    half = max((depth_mm or sum(sides) / 2) / 2 / spacing[axis], 1.0)
    centre = round(low[axis])
    low[axis], high[axis] = centre - half, centre + half
    if shape_ijk is not None:
        low[axis], high[axis] = max(low[axis], 0), min(high[axis], shape_ijk[axis] - 1)

    def to_ras(ijk):
        return (matrix @ np.append(ijk, 1.0))[:3]

    return to_ras(low), to_ras(high)


class Background:
    """Run one call off the GUI thread; the GUI polls :meth:`poll` (e.g. from a QTimer) and applies
    the result on its own thread. Qt-free so that it is testable anywhere."""

    def __init__(self, function, *args, **kwargs) -> None:
        self.result = None
        self.error: BaseException | None = None
        self._done = threading.Event()

        def run():
            try:
                self.result = function(*args, **kwargs)
            except BaseException as error:  # noqa: BLE001 - handed to the GUI thread
                self.error = error
            finally:
                self._done.set()

        self.thread = threading.Thread(target=run, daemon=True, name="fastsam3d-request")
        self.thread.start()

    def poll(self) -> bool:
        """True once the call has finished (then read :attr:`result` or :attr:`error`)."""
        return self._done.is_set()

    def wait(self, timeout: float | None = None):
        """Block until done (tests, scripts); returns the result or raises the error."""
        self._done.wait(timeout)
        if self.error is not None:
            raise self.error
        return self.result


def decode_region(region: dict) -> tuple[tuple[slice, slice, slice], np.ndarray]:
    """A server ``region`` (i fastest, box in i, j, k) as a (K, J, I) box and its values."""
    start, stop = region["start"], region["stop"]
    shape_ijk = tuple(b - a for a, b in zip(start, stop, strict=True))
    raw = zlib.decompress(base64.b64decode(region["data"]))
    values = np.frombuffer(raw, dtype=region["dtype"]).reshape(shape_ijk, order="F").transpose(2, 1, 0)
    return (slice(start[2], stop[2]), slice(start[1], stop[1]), slice(start[0], stop[0])), values


def write_nifti(array_kji: np.ndarray, ijk_to_ras: np.ndarray, path: str) -> None:
    """Write a (K, J, I) array with its IJK-to-RAS matrix as NIfTI (via SimpleITK, which Slicer bundles)."""
    import SimpleITK as sitk

    matrix = np.asarray(ijk_to_ras, dtype=np.float64)
    linear = _LPS @ matrix[:3, :3]  # IJK -> LPS
    spacing = np.linalg.norm(linear, axis=0)
    image = sitk.GetImageFromArray(np.ascontiguousarray(array_kji))
    image.SetSpacing(spacing.tolist())
    image.SetDirection((linear / spacing).flatten().tolist())
    image.SetOrigin((_LPS @ matrix[:3, 3]).tolist())
    sitk.WriteImage(image, path, useCompression=True)


def ras_to_ijk(ijk_to_ras: np.ndarray, ras) -> np.ndarray:
    """World RAS millimetres -> continuous (i, j, k)."""
    return (
        np.linalg.inv(np.asarray(ijk_to_ras, dtype=np.float64)) @ np.append(np.asarray(ras, dtype=np.float64), 1.0)
    )[:3]


def _multipart(field: str, filename: str, content: bytes) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    buffer = io.BytesIO()
    buffer.write(
        f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="{filename}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n".encode()
    )
    buffer.write(content)
    buffer.write(f"\r\n--{boundary}--\r\n".encode())
    return buffer.getvalue(), f"multipart/form-data; boundary={boundary}"
