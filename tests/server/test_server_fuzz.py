"""A corpus of hostile and heavy requests (issue 16): each gets its 4xx, never a 500; the server
stays up; no temporary file outlives its request or session."""

from __future__ import annotations

import fcntl
import gzip
import io
import os
import socket
import threading
import time
import zipfile
from pathlib import Path

import httpx
import nibabel as nib
import numpy as np
import pytest
import uvicorn
from fastapi.testclient import TestClient

from fastsam3d.io import write_volume
from fastsam3d.server.app import create_app
from fastsam3d.server.protocol import decode_region
from fastsam3d.server.settings import ServerSettings

from ..helpers import IntensityModel, sphere_volume

KEY = "s3cret"
PART_HEAD = b'--x\r\nContent-Disposition: form-data; name="file"; filename="a.nii.gz"\r\n\r\n'


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("fuzz-data")
    volume, _ = sphere_volume()
    write_volume(volume, folder / "sphere.nii.gz")
    os.symlink("loop", folder / "loop")
    os.symlink("b", folder / "a")
    os.symlink("a", folder / "b")
    return folder


@pytest.fixture
def temp_root(tmp_path) -> Path:
    return tmp_path / "server-temp"


def make_client(data_dir: Path, temp_root: Path, **settings) -> TestClient:
    app = create_app(ServerSettings(data_dir=data_dir, temp_dir=temp_root, **settings), model=IntensityModel())
    return TestClient(app, base_url="http://127.0.0.1", raise_server_exceptions=False)


def session_folders(temp_root: Path) -> list[Path]:
    return list(temp_root.glob("server-*/session-*"))


def leftovers(temp_root: Path) -> list[Path]:
    """Everything under the temp root that is not this server's (empty) folder and lock."""
    return [p for p in temp_root.rglob("*") if not p.name.startswith("server-")]


def nifti_header_only(shape: tuple[int, ...], dtype=np.uint8) -> bytes:
    """A gzipped NIfTI whose header promises ``shape`` but holds almost no data (a bomb's header)."""
    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(dtype)
    header["vox_offset"] = 352
    return gzip.compress(header.binaryblock + b"\0" * 4 + b"\0" * 4096)


NRRD_BOMB = b"NRRD0004\ntype: int16\ndimension: 3\nsizes: 2048 2048 64\nencoding: gzip\n\n" + gzip.compress(bytes(1024))


def zip_of(files: dict[str, bytes]) -> bytes:
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as handle:
        for name, content in files.items():
            handle.writestr(name, content)
    return archive.getvalue()


def test_fuzz_corpus_gets_4xx_and_leaves_nothing(data_dir, temp_root):
    sphere = (data_dir / "sphere.nii.gz").read_bytes()
    corpus = [  # (method, path, keyword arguments, expected status)
        ("post", "/api/sessions", {"json": {"path": "sphere\x00.nii.gz"}}, 400),
        ("post", "/api/sessions", {"json": {"path": "a/" * 2500}}, 400),
        ("post", "/api/sessions", {"json": {"path": "x" * 300}}, 400),
        ("post", "/api/sessions", {"json": {"path": "loop"}}, 400),
        ("post", "/api/sessions", {"json": {"path": "a/sphere.nii.gz"}}, 400),
        ("post", "/api/sessions", {"json": {"path": "../" * 40 + "etc/passwd"}}, 400),
        ("post", "/api/sessions/upload", {"files": {"file": ("x" * 300 + ".nii.gz", b"\x1f\x8b junk")}}, 400),
        ("post", "/api/sessions/upload", {"files": {"file": ("a\x00b.nii.gz", b"\x1f\x8b junk")}}, 400),
        (
            "post",
            "/api/sessions/upload",
            {"files": {"file": ("bomb.nii.gz", nifti_header_only((1024, 1024, 512)))}},
            400,
        ),
        (
            "post",
            "/api/sessions/upload",
            {"files": {"file": ("bomb.nii.gz", nifti_header_only((600, 600, 600), np.float64))}},
            400,
        ),
        ("post", "/api/sessions/upload", {"files": {"file": ("bomb.nrrd", NRRD_BOMB)}}, 400),
        (
            "post",
            "/api/sessions/upload",
            {"files": {"file": ("many.zip", zip_of({f"{i}.dcm": b"x" for i in range(60)}))}},
            400,
        ),
        ("post", "/api/sessions/upload", {"files": {"file": ("zeros.zip", zip_of({"a.dcm": bytes(4 << 20)}))}}, 400),
        ("post", "/api/sessions/upload", {"files": {"file": ("long.zip", zip_of({"x" * 300 + ".dcm": b"x"}))}}, 400),
        ("post", "/api/sessions/upload", {"files": {"file": ("big.nii.gz", bytes(4 << 20))}}, 413),
        (
            "post",
            "/api/sessions/upload",
            {
                "content": iter([PART_HEAD] + [bytes(1 << 16)] * 80),
                "headers": {"content-type": "multipart/form-data; boundary=x"},
            },
            413,
        ),
        (
            "post",
            "/api/sessions",
            {"content": b"{" + b" " * (2 << 20) + b"}", "headers": {"content-type": "application/json"}},
            413,
        ),
        ("post", "/api/sessions/nope/clicks", {"json": {"points": [[1, 2, 3]]}}, 404),
    ]
    with make_client(
        data_dir, temp_root, api_key=KEY, max_upload_mb=3, max_unpacked_mb=3, max_zip_entries=50
    ) as client:
        key = {"X-API-Key": KEY}
        assert client.get("/api/files", headers=key).json()["files"] == ["sphere.nii.gz"]  # loops listed as nothing
        for method, path, kwargs, status in corpus:
            kwargs = dict(kwargs)
            kwargs["headers"] = {**kwargs.get("headers", {}), **key}
            response = getattr(client, method)(path, **kwargs)
            assert response.status_code == status, (path, str(kwargs)[:80], response.text[:200])
            detail = response.json()["detail"]
            assert str(temp_root) not in detail and str(data_dir) not in detail, detail
            assert session_folders(temp_root) == []
        bomb = client.post(
            "/api/sessions/upload", headers=key, files={"file": ("bomb.nii.gz", nifti_header_only((1024, 1024, 512)))}
        ).json()["detail"]
        assert "voxels" in bomb and "bomb.nii.gz" in bomb
        long_name = client.post("/api/sessions/upload", headers=key, files={"file": ("y" * 300 + ".nii.gz", sphere)})
        assert long_name.status_code == 200, long_name.text
        assert len(long_name.json()["name"]) <= 100
        assert len(session_folders(temp_root)) == 1
        mask = client.post(
            f"/api/sessions/{long_name.json()['id']}/mask", headers=key, files={"file": ("mask.nii.gz", bytes(4 << 20))}
        )
        assert mask.status_code == 413
        mask = client.post(
            f"/api/sessions/{long_name.json()['id']}/mask",
            headers=key,
            files={"file": ("mask.nii.gz", nifti_header_only((1024, 1024, 512)))},
        )
        assert mask.status_code == 400 and "voxels" in mask.json()["detail"]
        files = sorted(path.name for path in session_folders(temp_root)[0].iterdir())
        assert files == ["upload.nii.gz", "voxels.npy"]  # the upload and its mapped voxels: no refused mask
        assert client.delete(f"/api/sessions/{long_name.json()['id']}", headers=key).status_code == 200
        assert client.get("/api/health", headers=key).json()["status"] == "ok"
    assert leftovers(temp_root) == []


def test_key_is_checked_on_bytes_on_every_route(data_dir, temp_root):
    with make_client(data_dir, temp_root, api_key=KEY) as client:
        routes = [
            (method, path.replace("{session_id}", "x"))
            for path, methods in client.app.openapi()["paths"].items()
            for method in methods
        ]
        assert len(routes) >= 18
        for value in (b"\xff\xfe", "s3crét".encode(), b"s3cret\x00", b""):
            for method, path in routes:
                response = client.request(method, path, headers={"X-API-Key": value})
                assert response.status_code == 401, (method, path, value)
        big = client.post("/api/sessions/upload", files={"file": ("big.nii.gz", bytes(4 << 20))})
        assert big.status_code == 401  # refused before the body (see the socket test for the bytes read)


def test_host_header_cors_and_docs_page(data_dir, temp_root):
    with make_client(data_dir, temp_root) as client:
        assert client.get("/api/health", headers={"Host": "evil.example:8000"}).status_code == 400
        assert client.get("/", headers={"Host": "rebind.attacker.test"}).status_code == 400
        for host in ("localhost:8000", "127.0.0.1", "[::1]:8000"):
            assert client.get("/api/health", headers={"Host": host}).status_code == 200, host
        answer = client.get("/api/health", headers={"Origin": "http://evil.example"})
        assert "access-control-allow-origin" not in answer.headers
        preflight = client.options(
            "/api/sessions", headers={"Origin": "http://evil.example", "Access-Control-Request-Method": "POST"}
        )
        assert "access-control-allow-origin" not in preflight.headers
        docs = client.get("/docs")
        assert docs.status_code == 200 and "/openapi.json" in docs.text and "<script src=" not in docs.text
        assert "cdn" not in docs.text.lower()
    with make_client(data_dir, temp_root, allowed_hosts=("*",)) as client:
        assert client.get("/api/health", headers={"Host": "anything.test"}).status_code == 200


def test_points_capped_and_applied_all_or_nothing(data_dir, temp_root):
    with make_client(data_dir, temp_root, max_points=5) as client:
        session = client.post("/api/sessions", json={"path": "sphere.nii.gz"}).json()["id"]
        clicks = f"/api/sessions/{session}/clicks"
        too_many = client.post(clicks, json={"points": [[60, 50, 22]] * 6})
        assert too_many.status_code == 400 and "at most 5" in too_many.json()["detail"]
        assert client.post(clicks, json={"points": [[60, 50, 22]] * 100_000}).status_code == 413  # > 1 MB of JSON
        mixed = {"points": [[60, 50, 22], [500, 5, 5]]}
        refused = client.post(clicks, json=mixed)
        assert refused.status_code == 400 and "outside the volume" in refused.json()["detail"]
        assert client.get(f"/api/sessions/{session}").json()["objects"] == []  # not even an empty object
        first = client.post(clicks, json={"points": [[60, 50, 22]]}).json()
        assert client.post(clicks, json=mixed).status_code == 400
        assert client.post(clicks, json={"points": [[1, 2, 3]], "object": 9}).status_code == 400
        undo = f"/api/sessions/{session}/undo"
        assert client.post(undo, json={}).json()["changed"] is True  # the first click ...
        assert client.post(undo, json={}).json()["changed"] is False  # ... and nothing from the refused ones
        client.post(f"/api/sessions/{session}/redo", json={})
        mirror = labels(client, session)  # what a client keeps, patched from the answers
        both = client.post(clicks, json={"points": [[60, 50, 22], [5, 5, 5]], "positive": [False, True]}).json()
        box, values = decode_region(both["region"])
        mirror[box] = values
        np.testing.assert_array_equal(mirror, labels(client, session))  # the answer covers both clicks' changes
        assert len(first["objects"]) == 1 == len(client.get(f"/api/sessions/{session}").json()["objects"])


def labels(client: TestClient, session: str) -> np.ndarray:
    content = client.get(f"/api/sessions/{session}/labels").content
    return np.asarray(nib.Nifti1Image.from_bytes(gzip.decompress(content)).dataobj)


class SlowModel(IntensityModel):
    """The intensity model with a slow decoder: a session that stays busy."""

    def decode(self, *args, **kwargs):
        time.sleep(0.3)
        return super().decode(*args, **kwargs)


def serve(app, **config):
    """uvicorn on a free loopback port in a thread; returns (server, thread, base URL)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", **config))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    return server, thread, f"http://127.0.0.1:{port}"


def raw_request(port: int, head: bytes, body_chunks, pause: float = 0.0) -> bytes:
    """Send a request's head and some body chunks over a socket; return the answer's first bytes."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
        connection.sendall(head)
        for chunk in body_chunks:
            connection.sendall(chunk)
        time.sleep(pause)
        return connection.recv(4096)


def test_refused_before_the_body_busy_session_and_shutdown(data_dir, temp_root):
    settings = ServerSettings(data_dir=data_dir, temp_dir=temp_root, api_key=KEY, max_upload_mb=1, request_seconds=1.5)
    server, thread, base = serve(create_app(settings, model=SlowModel()), timeout_graceful_shutdown=2)
    port = int(base.rsplit(":", 1)[1])
    try:
        upload = b"POST /api/sessions/upload HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; boundary=x\r\n"
        # 300 MB declared, 64 kB sent: the answer comes without the rest of the body
        assert b" 401 " in raw_request(port, upload + b"Content-Length: 314572800\r\n\r\n", [bytes(1 << 16)])[:20]
        keyed = upload + f"X-API-Key: {KEY}\r\n".encode()
        assert b" 413 " in raw_request(port, keyed + b"Content-Length: 314572800\r\n\r\n", [bytes(1 << 16)])[:20]
        parts = [PART_HEAD] + [bytes(1 << 18)] * 6  # 1.5 MB chunked, never finished
        chunks = [b"%x\r\n%s\r\n" % (len(part), part) for part in parts]
        assert b" 413 " in raw_request(port, keyed + b"Transfer-Encoding: chunked\r\n\r\n", chunks, pause=0.5)[:20]
        assert leftovers(temp_root) == []

        key = {"X-API-Key": KEY}
        with httpx.Client(base_url=base, headers=key, timeout=30) as client:
            session = client.post("/api/sessions", json={"path": "sphere.nii.gz"}).json()["id"]
            statuses = []

            def click() -> None:
                with httpx.Client(base_url=base, headers=key, timeout=30) as own:
                    try:
                        statuses.append(
                            own.post(f"/api/sessions/{session}/clicks", json={"points": [[60, 50, 22]] * 4}).status_code
                        )
                    except httpx.HTTPError:  # the server stopping under it (the last one)
                        statuses.append(0)

            clickers = [threading.Thread(target=click) for _ in range(12)]
            for clicker in clickers:
                clicker.start()
            time.sleep(0.3)
            latencies = []
            for _ in range(10):
                started = time.perf_counter()
                assert client.get("/api/health").status_code == 200
                latencies.append(time.perf_counter() - started)
                time.sleep(0.05)
            for clicker in clickers:
                clicker.join()
            # the target is 0.1 s (benchmarks/server_load.py); here: never stuck behind the ~3.6 s of queued work
            assert max(latencies) < 1.0, latencies
            assert set(statuses) <= {200, 503} and 503 in statuses  # 12 x 0.3 s queued on one session > 1.5 s deadline
            time.sleep(1.5)  # let the cancelled work roll back
            applied = statuses.count(
                200
            )  # one undo step per request (its 4 clicks are one interaction); the refused left none
            assert len(client.get(f"/api/sessions/{session}").json()["objects"]) == (applied > 0)
            undo = [
                client.post(f"/api/sessions/{session}/undo", json={}).json()["changed"]
                for _ in range(applied + 1 if applied else 0)
            ]
            assert undo == [True] * applied + [False] * bool(applied)
            started = time.perf_counter()
            threading.Thread(target=click).start()
            time.sleep(0.2)
    finally:
        server.should_exit = True
        thread.join(10)
    assert not thread.is_alive() and time.perf_counter() - started < 6  # stopped within a few seconds, while busy
    assert leftovers(temp_root) == [] and list(temp_root.iterdir()) == []


def test_stale_folders_of_dead_servers_are_removed(data_dir, temp_root):
    temp_root.mkdir(parents=True)
    dead = temp_root / "server-dead"
    (dead / "session-1" / "dicom").mkdir(parents=True)
    (dead / "session-1" / "labels.nii.gz.tmp").write_bytes(b"x")
    (temp_root / "server-dead.lock").write_bytes(b"")
    alive = temp_root / "server-alive"
    (alive / "session-2").mkdir(parents=True)
    with open(temp_root / "server-alive.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as a live server holds it
        with make_client(data_dir, temp_root) as client:
            assert client.get("/api/health").status_code == 200
            assert not dead.exists() and not (temp_root / "server-dead.lock").exists()
            assert (alive / "session-2").is_dir()


def test_idle_sessions_expire_in_the_background(data_dir, temp_root):
    with make_client(data_dir, temp_root, idle_seconds=0.5) as client:
        client.post("/api/sessions", json={"path": "sphere.nii.gz"})
        assert client.get("/api/health").json()["sessions"] == 1
        deadline = time.monotonic() + 10
        while client.get("/api/health").json()["sessions"] and time.monotonic() < deadline:
            time.sleep(0.2)  # only /api/health is called: expiry does not wait for a session lookup
        assert client.get("/api/health").json()["sessions"] == 0 and session_folders(temp_root) == []


def test_exposed_host_needs_a_key(capsys, monkeypatch):
    from fastsam3d.cli import main

    monkeypatch.delenv("FASTSAM3D_API_KEY", raising=False)
    assert main(["serve", "--host", "0.0.0.0"]) == 2
    assert "--insecure" in capsys.readouterr().err
