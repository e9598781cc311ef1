"""Real server processes on one state folder: killed with SIGKILL, restarted, and two replicas where
the second takes a session over from the first (the client simply retries on the other port)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from fastsam3d.io import write_volume

from ..helpers import sphere_volume
from .test_server import centre_voxel
from .test_server_state import Mirror

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def folders(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    write_volume(sphere_volume()[0], data / "sphere.nii.gz")
    return {"data_dir": str(data), "state_dir": str(tmp_path / "state"), "temp_dir": str(tmp_path / "temp")}


class ServerProcess:
    """``tests.server.stub_server`` on a free port."""

    def __init__(self, settings: dict) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        env = os.environ | {"PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)]), "OMP_NUM_THREADS": "1"}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.server.stub_server", str(self.port), json.dumps(settings)], cwd=ROOT, env=env
        )
        self.url = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/api/health").status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.2)
        self.kill()
        raise RuntimeError("the server did not start")

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)


def call(url: str, method: str, route: str, **body) -> dict:
    response = httpx.request(method, f"{url}/api{route}", timeout=60, **({"json": body} if body else {}))
    assert response.status_code == 200, response.text
    return response.json()


def labels(url: str, session: str, tmp_path: Path) -> np.ndarray:
    import nibabel as nib

    response = httpx.get(f"{url}/api/sessions/{session}/labels", timeout=60)
    assert response.status_code == 200, response.text
    path = tmp_path / "labels.nii.gz"
    path.write_bytes(response.content)
    return np.asarray(nib.load(path).dataobj)


def test_a_killed_server_restarts_with_every_answered_change(folders, tmp_path):
    centre = centre_voxel()
    first = ServerProcess(folders | {"sync_saves": True})
    try:
        session = call(first.url, "POST", "/sessions", path="sphere.nii.gz")
        mirror = Mirror(session["shape"])
        session = session["id"]
        call(first.url, "POST", f"/sessions/{session}/objects", name="tumour")
        mirror.apply(call(first.url, "POST", f"/sessions/{session}/clicks", points=[centre]))
        call(first.url, "POST", f"/sessions/{session}/objects", name="edge")
        mirror.apply(call(first.url, "POST", f"/sessions/{session}/clicks", points=[[centre[0] - 5, *centre[1:]]]))
        mirror.apply(call(first.url, "POST", f"/sessions/{session}/undo", object=2))
    finally:
        first.kill()  # SIGKILL: no shutdown code runs
    second = ServerProcess(folders)
    try:
        listed = call(second.url, "GET", "/sessions")["sessions"]
        assert [(row["id"], [o["name"] for o in row["objects"]]) for row in listed] == [(session, ["tumour", "edge"])]
        assert np.array_equal(labels(second.url, session, tmp_path), mirror.array)  # the last answer's
        mirror.apply(call(second.url, "POST", f"/sessions/{session}/redo", object=2))
        assert (mirror.array == 2).any()
        mirror.apply(call(second.url, "POST", f"/sessions/{session}/undo", object=2))
        mirror.apply(call(second.url, "POST", f"/sessions/{session}/undo", object=1))
        assert not mirror.array.any()  # both objects back at their first step
        assert np.array_equal(labels(second.url, session, tmp_path), mirror.array)
    finally:
        second.kill()


def test_a_replica_takes_a_session_over_when_the_first_dies(folders, tmp_path):
    centre = centre_voxel()
    settings = folders | {"sync_saves": True, "lease_seconds": 2.0}
    replicas = [ServerProcess(settings), ServerProcess(settings)]
    try:
        first, second = replicas
        opened = call(first.url, "POST", "/sessions", path="sphere.nii.gz")
        session, mirror = opened["id"], Mirror(opened["shape"])
        mirror.apply(call(first.url, "POST", f"/sessions/{session}/clicks", points=[centre]))
        held = httpx.post(f"{second.url}/api/sessions/{session}/clicks", json={"points": [centre]})
        assert held.status_code == 409  # one writer per session
        mirror.apply(call(first.url, "POST", f"/sessions/{session}/clicks", points=[centre], positive=False))
        expected = mirror.array.copy()
        first.kill()
        deadline = time.monotonic() + 20
        while (answer := httpx.post(f"{second.url}/api/sessions/{session}/redo", json={})).status_code == 409:
            assert time.monotonic() < deadline
            time.sleep(0.3)
        assert answer.status_code == 200 and not answer.json()["changed"]  # the last step was kept
        assert np.array_equal(labels(second.url, session, tmp_path), expected)  # nothing answered was lost
        mirror.apply(call(second.url, "POST", f"/sessions/{session}/undo", object=1))
        assert not np.array_equal(mirror.array, expected)
        mirror.apply(call(second.url, "POST", f"/sessions/{session}/redo", object=1))
        assert np.array_equal(mirror.array, expected)
    finally:
        for replica in replicas:
            if replica.process.poll() is None:
                replica.kill()
