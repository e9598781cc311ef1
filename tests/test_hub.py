"""Official weights by name against a loopback server standing in for the Hugging Face hub (HF_ENDPOINT)."""

import argparse
import hashlib
import io
import json
import os
import subprocess
import sys
import threading
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
import torch

import fastsam3d.registry
from fastsam3d import hub
from fastsam3d.cli import main
from fastsam3d.errors import CheckpointError
from fastsam3d.io import Volume, read_volume, write_volume
from fastsam3d.registry import MODEL_CONFIGS, build_model

from .helpers import sphere_volume

pytest.importorskip("huggingface_hub", reason="huggingface_hub not installed: pip install 'fastsam3d[weights]'")

TURBO = "/blueyo0/SAM-Med3D/resolve/main/sam_med3d_turbo.pth"


def official_bytes(config="tiny-teacher") -> bytes:
    """A small random-weight checkpoint in the official training format (weights beside pickled args)."""
    buffer = io.BytesIO()
    torch.save(
        {
            "epoch": 1,
            "model_state_dict": build_model(config).state_dict(),
            "optimizer_state_dict": {},
            "args": argparse.Namespace(model_type="vit_b_ori"),
        },
        buffer,
    )
    return buffer.getvalue()


def small_volume() -> Volume:
    """80 mm across: within one region of interest of the tiny model (64³ at 1.5 mm), one encoder run."""
    grid = np.linalg.norm(np.indices((40, 40, 24)) - np.array([20, 20, 12])[:, None, None, None], axis=0)
    array = np.where(grid < 8, 200.0, 40.0) + np.random.default_rng(0).normal(0, 5, grid.shape)
    return Volume(array.astype(np.float32), np.full(3, 2.0), np.zeros(3), np.eye(3))


class FakeHub(ThreadingHTTPServer):
    """Serves ``files`` like huggingface.co's resolve endpoint: HEAD with X-Repo-Commit / ETag (the sha256),
    GET with Range. ``cut`` bytes: the first GET of a file stops there (connection dropped)."""

    daemon_threads = True

    def __init__(self, files):
        self.files, self.requests, self.cut, self.etag_override = files, [], None, None

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _head(self, body, status=200, extra=()):
                self.send_response(status)
                self.send_header("X-Repo-Commit", "a" * 40)
                self.send_header("ETag", f'"{server.etag_override or hashlib.sha256(body).hexdigest()}"')
                for key, value in extra:
                    self.send_header(key, value)
                self.end_headers()

            def do_HEAD(self):
                server.requests.append(("HEAD", self.path, None))
                body = server.files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                self._head(body, extra=[("Content-Length", str(len(body)))])

            def do_GET(self):
                rng = self.headers.get("Range")
                if not self.path.startswith("/api/"):  # huggingface_hub's own registry look-ups are not downloads
                    server.requests.append(("GET", self.path, rng))
                body = server.files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                start = int(rng.split("=")[1].split("-")[0]) if rng else 0
                part = body[start:]
                status = 206 if rng else 200
                extra = [("Content-Length", str(len(part)))]
                if rng:
                    extra.append(("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}"))
                self._head(body, status, extra)
                if server.cut and not rng:
                    self.wfile.write(part[: server.cut])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                self.wfile.write(part)

        server = self
        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self):
        return f"http://127.0.0.1:{self.server_address[1]}"


@pytest.fixture
def fake_hub(monkeypatch, tmp_path):
    server = FakeHub({TURBO: official_bytes()})
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("FASTSAM3D_WEIGHTS", str(tmp_path / "weights"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    # the official name, with a tiny architecture so that the random-weight stand-in stays small
    monkeypatch.setitem(
        MODEL_CONFIGS, "sam-med3d-turbo", replace(MODEL_CONFIGS["tiny-teacher"], name="sam-med3d-turbo")
    )
    yield server
    server.shutdown()


def test_segment_by_official_name_downloads_once_then_runs_offline(fake_hub, tmp_path, capsys, monkeypatch):
    old = os.umask(0o022)
    try:
        image = write_volume(small_volume(), tmp_path / "small.nii.gz")
        argv = ["segment", str(image), "--point", "20,20,12", "--model", "sam-med3d-turbo"]
        assert main([*argv, "--out", str(tmp_path / "a" / "seg.nii.gz")]) == 0, capsys.readouterr().err
        assert [r[:2] for r in fake_hub.requests] == [("HEAD", TURBO), ("GET", TURBO)]
        path = hub.cached_path("sam-med3d-turbo")
        assert str(path).startswith(str(tmp_path / "hf" / "hub"))
        record = json.loads((tmp_path / "weights" / "checksums.json").read_text())["files"]["sam-med3d-turbo"]
        assert record["sha256"] == hashlib.sha256(fake_hub.files[TURBO]).hexdigest()
        for written in (tmp_path / "a" / "seg.nii.gz", path.resolve(), tmp_path / "weights" / "checksums.json"):
            assert written.stat().st_mode & 0o777 == 0o644, written
        fake_hub.shutdown()  # the second run needs no network at all
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        assert main([*argv, "--out", str(tmp_path / "b.nii.gz")]) == 0
        assert read_volume(tmp_path / "b.nii.gz").array.any()
    finally:
        os.umask(old)


def test_sha_mismatch_at_download_and_after(fake_hub):
    fake_hub.etag_override = "0" * 64  # the server announces another file than it sends
    with pytest.raises(CheckpointError, match="sha256"):
        hub.fetch("sam-med3d-turbo")
    assert hub.cached_path("sam-med3d-turbo") is None  # the bad download was removed
    fake_hub.etag_override = None
    path = hub.fetch("sam-med3d-turbo")
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    path.resolve().write_bytes(bytes(data))  # same size, other content (and a new mtime)
    with pytest.raises(CheckpointError, match="has changed since it was downloaded"):
        hub.fetch("sam-med3d-turbo")
    assert dict(hub.verify(["sam-med3d-turbo"]))["sam-med3d-turbo"].startswith("MISMATCH")


def test_interrupted_hub_download_resumes(fake_hub, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "DOWNLOAD_CHUNK_SIZE", 1 << 16)  # 10 MB by default: more than this file
    size = len(fake_hub.files[TURBO])
    fake_hub.cut = size // 3
    path = hub.fetch("sam-med3d-turbo")
    assert path.read_bytes() == fake_hub.files[TURBO]
    ranges = [r[2] for r in fake_hub.requests if r[0] == "GET"]
    assert ranges[0] is None and len(ranges) == 2
    assert 0 < int(ranges[1].removeprefix("bytes=").rstrip("-")) <= size // 3  # resumed, not restarted


def test_interrupted_url_download_resumes_on_the_next_fetch(fake_hub, monkeypatch, tmp_path):
    body = os.urandom(300_000)
    fake_hub.files["/sam_vit_b_01ec64.pth"] = body
    fake_hub.cut = 100_000
    entry = replace(hub.CATALOGUE["sam-vit-b"], source=f"url:{fake_hub.url}/sam_vit_b_01ec64.pth")
    monkeypatch.setitem(hub.CATALOGUE, "sam-vit-b", entry)
    with pytest.raises(hub.WeightsUnavailable, match="100000 bytes kept"):
        hub.fetch("sam-vit-b")
    path = hub.fetch("sam-vit-b")
    assert path == tmp_path / "weights" / "sam-vit-b" / "sam_vit_b_01ec64.pth" and path.read_bytes() == body
    assert fake_hub.requests[-1][2] == "bytes=100000-"


def test_offline_and_licence_errors_are_one_line(fake_hub, monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    image = write_volume(sphere_volume()[0], tmp_path / "s.nii.gz")
    code = main(
        ["segment", str(image), "--point", "1,1,1", "--model", "sam-med3d-turbo", "--out", str(tmp_path / "o.nii.gz")]
    )
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "fastsam3d weights fetch sam-med3d-turbo" in err
    assert str(tmp_path / "weights" / "sam-med3d-turbo" / "sam_med3d_turbo.pth") in err and not fake_hub.requests
    monkeypatch.delenv("HF_HUB_OFFLINE")
    assert main(["weights", "fetch", "fast3dsam"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--accept-licence" in err and "research use" in err and not fake_hub.requests


def test_weights_list_imports_neither_torch_nor_matplotlib(tmp_path):
    # what keeps it fast (its time: docs/benchmarks.md); timed asserts fail on a loaded machine
    code = (
        "import sys; from fastsam3d.cli import main; main(['weights', 'list']); "
        "assert 'torch' not in sys.modules and 'matplotlib' not in sys.modules"
    )
    env = {**os.environ, "FASTSAM3D_WEIGHTS": str(tmp_path), "HF_HOME": str(tmp_path / "hf")}
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        encoding="utf-8",
        errors="replace",
        env=env,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert any(line.startswith("sam-med3d-turbo") and " no " in line for line in lines)
    assert any(line.startswith("litemedsam") for line in lines) and any(line.startswith("sam-med2d") for line in lines)


def test_official_models_for_servers():
    rows = {row["name"]: row for row in hub.official_models()}
    assert rows["default"]["cached"] and rows["default"]["dims"] == 3 and rows["medsam"]["dims"] == 2
    assert set(rows) >= {
        "sam-med3d-turbo",
        "fastsam3d",
        "fastsam3d-encoder",
        "fast3dsam",
        "sam-vit-b",
        "medsam",
        "sam-med2d",
    }
    assert all({"licence", "description", "cached", "source"} <= set(row) for row in rows.values())


def test_encoder_only_official_model_takes_its_decoder_from_sam_med3d_turbo(fake_hub, monkeypatch):
    """`--model fastsam3d-encoder`: the encoder-only distillation file plus SAM-Med3D-turbo's prompt
    encoder and decoder, both fetched by name (the Drive file stands in as a plain URL here)."""
    student = build_model("tiny-student")
    encoder = {
        k.removeprefix("image_encoder."): v for k, v in student.state_dict().items() if k.startswith("image_encoder.")
    }
    buffer = io.BytesIO()
    torch.save({"model_state_dict": encoder, "args": argparse.Namespace(epochs=1)}, buffer)
    fake_hub.files["/encoder.pth"] = buffer.getvalue()
    entry = replace(hub.CATALOGUE["fastsam3d-encoder"], source=f"url:{fake_hub.url}/encoder.pth")
    monkeypatch.setitem(hub.CATALOGUE, "fastsam3d-encoder", entry)
    monkeypatch.setitem(MODEL_CONFIGS, "fastsam3d", replace(MODEL_CONFIGS["tiny-student"], name="fastsam3d"))
    model = fastsam3d.registry.load_model("fastsam3d-encoder")
    assert model.config.name == "fastsam3d"
    for key, value in student.image_encoder.state_dict().items():
        assert torch.equal(model.image_encoder.state_dict()[key], value)
    assert {p for _, p, _ in fake_hub.requests} == {"/encoder.pth", TURBO}


def test_unreachable_hub_fails_in_one_line_within_seconds(monkeypatch, capsys, tmp_path):
    """No network (every connection refused after a slow lookup): one line naming the model, where it looked
    and how to get the file, well before huggingface_hub's retries would end."""
    import socket
    import time

    def blocked(*args, **kwargs):
        time.sleep(10)  # a name lookup that hangs: the probe gives up first
        raise OSError(101, "Network is unreachable")

    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setenv("HF_ENDPOINT", "https://huggingface.example")
    monkeypatch.setattr(socket, "create_connection", blocked)
    image = write_volume(sphere_volume()[0], tmp_path / "s.nii.gz")
    start = time.perf_counter()
    code = main(
        ["segment", str(image), "--point", "1,1,1", "--model", "fastsam3d", "--out", str(tmp_path / "o.nii.gz")]
    )
    seconds = time.perf_counter() - start
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and seconds < 5, (seconds, err)
    assert err.startswith("fastsam3d: error: fastsam3d is not downloaded and the network is unreachable")
    assert "Hugging Face cache" in err and "did not answer within 3 s" in err
    assert "`fastsam3d weights fetch fastsam3d`" in err and "--checkpoint FILE" in err

    def refused(*args, **kwargs):
        raise ConnectionRefusedError(111, "Connection refused")

    monkeypatch.setattr(socket, "create_connection", refused)
    with pytest.raises(hub.WeightsUnavailable, match=r"huggingface\.example:443 is unreachable \(Connection refused\)"):
        hub.fetch("sam-med3d-turbo")
