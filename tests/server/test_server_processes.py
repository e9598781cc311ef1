"""Real server processes on one state folder: killed with SIGKILL, restarted, and two replicas where
the second takes a session over from the first (the client simply retries on the other port), and a
server killed under the load of 20 clients."""

from __future__ import annotations

import json
import logging
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from fastsam3d.io import write_volume
from fastsam3d.server.state import SessionRecords

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

    def __init__(self, settings: dict, log: Path | None = None) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        env = os.environ | {"PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)]), "OMP_NUM_THREADS": "1"}
        with open(log or os.devnull, "ab") as stderr:  # the server's warnings, when ``log`` is given
            self.process = subprocess.Popen(
                [sys.executable, "-m", "tests.server.stub_server", str(self.port), json.dumps(settings)],
                cwd=ROOT,
                env=env,
                stderr=stderr if log else None,
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


class LoadClient(threading.Thread):
    """One user on one session: a seeded stream of clicks (include and exclude, near the centre),
    undos and new objects, each answer patched into a :class:`Mirror`; it stops at its first
    transport error (the server was killed), keeping the request that was cut off."""

    def __init__(self, url: str, opened: dict, seed: int) -> None:
        super().__init__(daemon=True)
        self.url, self.session = url, opened["id"]
        self.mirror = Mirror(opened["shape"])
        self.objects: list[tuple[int, str]] = []  # as the last answer listed them
        self.answered: list[tuple[str, dict]] = []
        self.in_flight: tuple[str, dict] | None = None  # sent, never answered
        self.failure = ""  # an answer other than 200: a failure of the test
        self.random = random.Random(seed)
        self.centre = centre_voxel()

    def next_request(self) -> tuple[str, dict]:
        labels = [label for label, _ in self.objects]
        roll = self.random.random()
        if labels and roll < 0.15:
            return "undo", {"object": self.random.choice(labels)}
        if roll < 0.25 and len(labels) < 4:
            return "objects", {"name": f"object {len(labels) + 1}"}
        point = [c + self.random.randint(-6, 6) for c in self.centre]
        return "clicks", {
            "points": [point],
            "positive": self.random.random() < 0.7,
            "object": self.random.choice([None, *labels]),
        }

    def send(self, http: httpx.Client, request: tuple[str, dict]) -> None:
        response = http.post(f"/api/sessions/{self.session}/{request[0]}", json=request[1])
        if response.status_code != 200:
            self.failure = f"{request}: {response.status_code} {response.text}"
            raise RuntimeError(self.failure)
        answer = self.mirror.apply(response.json())
        self.objects = [(row["label"], row["name"]) for row in answer["objects"]]
        self.answered.append(request)

    def run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=60) as http:
            while not self.failure:
                request = self.next_request()
                try:
                    self.send(http, request)
                except httpx.TransportError:
                    self.in_flight = request
                    return
                except RuntimeError:
                    return


@pytest.mark.slow
def test_a_server_killed_under_load_keeps_what_it_answered(folders, tmp_path, caplog):
    """20 clients on 20 sessions; SIGKILL while they click; a new server on the same folder has every
    session with the labels of its last answer, or one step further where the step cut off by the kill
    was saved but not answered (that step replayed on a new session must give exactly those labels)."""
    first = ServerProcess(folders | {"sync_saves": True})
    try:
        opened = [call(first.url, "POST", "/sessions", path="sphere.nii.gz") for _ in range(20)]
        clients = [LoadClient(first.url, row, seed) for seed, row in enumerate(opened)]
        for client in clients:
            client.start()
        started = time.monotonic()
        deadline = started + 60
        while min(len(c.answered) for c in clients) < 15 and not any(c.failure for c in clients):
            assert time.monotonic() < deadline, [len(c.answered) for c in clients]
            time.sleep(0.05)
        loaded = time.monotonic() - started
    finally:
        first.kill()  # SIGKILL with requests in flight
    for client in clients:
        client.join(60)
        assert not client.is_alive() and not client.failure, client.failure

    log = tmp_path / "second.log"
    second = ServerProcess(folders, log=log)
    try:
        listed = {row["id"]: row for row in call(second.url, "GET", "/sessions")["sessions"]}
        assert sorted(listed) == sorted(c.session for c in clients)
        outcomes = {"last answered": 0, "one step further": []}
        for client in clients:
            saved = labels(second.url, client.session, tmp_path)
            objects = [(o["label"], o["name"]) for o in listed[client.session]["objects"]]
            if np.array_equal(saved, client.mirror.array) and objects == client.objects:
                outcomes["last answered"] += 1
                continue
            assert client.in_flight is not None, f"{client.session} lost an answered change"
            replay = LoadClient(second.url, call(second.url, "POST", "/sessions", path="sphere.nii.gz"), 0)
            with httpx.Client(base_url=second.url, timeout=60) as http:
                for request in client.answered:
                    replay.send(http, request)
                assert np.array_equal(replay.mirror.array, client.mirror.array)  # the stand-in model is deterministic
                replay.send(http, client.in_flight)
            further = np.array_equal(saved, replay.mirror.array) and objects == replay.objects
            assert further, f"{client.session}: neither its last answer nor one step further ({client.in_flight})"
            call(second.url, "DELETE", f"/sessions/{replay.session}")
            outcomes["one step further"].append(client.in_flight[0])
        answered = sorted(len(c.answered) for c in clients)
        cut = sorted(c.in_flight[0] for c in clients if c.in_flight)
        print(f"killed after {loaded:.1f} s; answered per client {answered}; cut off: {cut}; restarted: {outcomes}")
    finally:
        second.kill()
    assert "skipping saved session" not in log.read_text()
    with caplog.at_level(logging.WARNING):
        records = SessionRecords(Path(folders["state_dir"]), 14)
        assert sorted(records.index) == sorted(c.session for c in clients)
        for client in clients:
            records.load(client.session)  # no corrupt record
    assert not caplog.records
