"""FastSAM3D for 3D Slicer: the client logic, free of Qt and Slicer so it is testable anywhere.

It talks to a ``fastsam3d serve`` server over HTTP (standard library only) and keeps the label
map in Slicer's array order (k, j, i). Geometry goes through the volume's full IJK-to-RAS matrix
(world RAS, after parent transforms), so oblique volumes work: the volume is uploaded with that
geometry and every click travels as a RAS point that the server maps to its voxels.

Session lifecycle (docs/server-state.md): opening a volume closes the previous session, a client
sends :meth:`FastSAM3DLogic.heartbeat` while the user works, :meth:`~FastSAM3DLogic.sessions` lists
the server's open and saved sessions and :meth:`~FastSAM3DLogic.resume` picks one up again. A
session the server no longer knows raises :class:`SessionGone` (HTTP 404), whose message says what
to do. Every request gives up after ``timeout`` seconds (default 130: just over the server's own
120 s deadline, so its answer arrives first when it has one).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import socket
import tempfile
import threading
import urllib.error
import urllib.parse
import urllib.request
import uuid

import numpy as np

from .labelmaps import (  # noqa: F401 - re-exported: the effect and the tests import them from here
    apply_segment_region,
    decode_region,
    flat_box_corners,
    ras_to_ijk,
    read_nifti,
    segment_region,
    write_nifti,
)

TIMEOUT_S = 130.0


class ServerError(RuntimeError):
    """The server answered with an error (its message), could not be reached or did not answer in time."""


class SessionGone(ServerError):
    """HTTP 404 for a session: the server has it neither open nor saved (closed, expired, another state folder)."""


class FastSAM3DLogic:
    """One volume, several objects, include/exclude points, boxes, undo/redo, uncertainty."""

    def __init__(
        self, url: str = "http://127.0.0.1:8000", api_key: str | None = None, timeout: float = TIMEOUT_S
    ) -> None:
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
            if error.code == 404 and path.startswith("/api/sessions/"):
                session_id = path.split("/")[3]
                raise SessionGone(
                    f"404: the server no longer has session {session_id} (closed, expired or another state "
                    "folder). Prompt again to upload the volume into a new session, or press Refresh under "
                    "Sessions and Resume one that is listed."
                ) from None
            raise ServerError(f"{error.code}: {detail}") from None
        except TimeoutError as error:
            raise ServerError(self._late(method, path)) from error
        except (urllib.error.URLError, OSError) as error:
            if isinstance(getattr(error, "reason", None), (TimeoutError, socket.timeout)):
                raise ServerError(self._late(method, path)) from None
            raise ServerError(f"cannot reach the fastsam3d server at {self.url}: {error}") from None
        return data if raw else json.loads(data)

    def _late(self, method: str, path: str) -> str:
        return (
            f"the server at {self.url} did not answer {method} {path.split('?')[0]} within {self.timeout:.0f} s: "
            "it may be overloaded or still encoding a large volume; try again (its work may still finish)"
        )

    # --- volume -------------------------------------------------------------------------

    def open_volume(
        self, array_kji: np.ndarray, ijk_to_ras: np.ndarray, name: str = "volume", model: str | None = None
    ) -> dict:
        """Upload a volume (Slicer array order (k, j, i) and its 4x4 IJK-to-RAS matrix); ``model``
        is one of :meth:`models` (default: the server's)."""
        array_kji = np.asarray(array_kji)
        if array_kji.ndim != 3:
            raise ValueError(f"a 3D volume is needed, got an array of shape {array_kji.shape}")
        self.close_previous()
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
        self.close_previous()
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
        """Close the open session on the server (``DELETE``: its saved record goes too)."""
        if self.session is not None:
            try:
                self.close_session(self.session["id"])
            finally:
                self.session = None

    def close_previous(self) -> None:
        """Before another volume: close the open session; one the server no longer has is simply forgotten."""
        with contextlib.suppress(SessionGone):
            self.close()

    def close_session(self, session_id: str) -> dict:
        """Close any of the server's sessions (e.g. one of :meth:`sessions`) and delete its saved record."""
        answer = self._request("DELETE", f"/api/sessions/{urllib.parse.quote(session_id)}")
        if self.session is not None and self.session["id"] == session_id:
            self.session = None
        return answer

    def heartbeat(self) -> dict:
        """Tell the server the session is in use, so that it is not closed as idle (it also reopens a saved one)."""
        return self._call("heartbeat", {})

    def sessions(self) -> list[dict]:
        """The server's open and saved sessions, most recently changed first: ``{"id", "name", "model",
        "dims", "objects", "updated", "open"}`` each."""
        return self._request("GET", "/api/sessions").get("sessions", [])

    def resume(self, session_id: str, shape_kji=None) -> dict:
        """Continue a session of :meth:`sessions`: its description, objects and label map (downloaded). With
        ``shape_kji`` (the volume shown, Slicer order) a session on another grid is refused."""
        answer = self._request("GET", f"/api/sessions/{urllib.parse.quote(session_id)}")
        shape = tuple(reversed(answer["shape"]))
        if shape_kji is not None and tuple(shape_kji) != shape:
            raise ServerError(
                f"session {session_id} is on a {answer['shape']} (i, j, k) grid, not on the selected volume's "
                f"{list(reversed(list(shape_kji)))}: select its volume first"
            )
        data = self._request("GET", f"/api/sessions/{urllib.parse.quote(session_id)}/labels?format=nii.gz", raw=True)
        if self.session is not None and self.session["id"] != session_id:
            self.close_previous()
        self._start(answer, shape)
        self.labels[...] = read_nifti(data)
        return self.session

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

    def stroke(self, kind: str, ras_points, positive: bool = True, label: int | None = None) -> dict:
        """A scribble (a polyline, 2 points or more) or a lasso (a closed polygon on one slice, 3 points or
        more) in world RAS millimetres, as one interaction; ``kind``: "scribble" or "lasso"."""
        if kind not in ("scribble", "lasso"):
            raise ValueError(f"a stroke is a scribble or a lasso, not {kind!r}")
        points = [list(map(float, point)) for point in ras_points]
        payload = {"points": points, "positive": bool(positive), "coordinates": "ras", "object": label or self.active}
        return self._apply(self._call(kind, payload))

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
