"""Saved sessions: a server restarted on the same state folder continues every session."""

from __future__ import annotations

import numpy as np
import pytest

from fastsam3d.io import write_volume
from fastsam3d.server.protocol import decode_region

from ..helpers import sphere_volume
from .test_server import centre_voxel, make_client, open_sphere


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("data")
    write_volume(sphere_volume()[0], folder / "sphere.nii.gz")
    return folder


@pytest.fixture
def state_dir(tmp_path):
    return tmp_path / "state"


def click(client, session, point, label=None, positive=True):
    response = client.post(
        f"/api/sessions/{session}/clicks", json={"points": [point], "positive": positive, "object": label}
    )
    assert response.status_code == 200, response.text
    return response.json()


class Mirror:
    """The label map a client keeps, patched from the answers' regions."""

    def __init__(self, shape):
        self.array = np.zeros(shape, dtype=np.uint8)

    def apply(self, answer):
        if answer.get("region"):
            box, values = decode_region(answer["region"])
            self.array[box] = values
        return answer


def labels_of(client, session, tmp_path):
    import nibabel as nib

    response = client.get(f"/api/sessions/{session}/labels")
    assert response.status_code == 200, response.text
    path = tmp_path / f"labels-{session}.nii.gz"
    path.write_bytes(response.content)
    return np.asarray(nib.load(path).dataobj)


def test_a_restarted_server_continues_the_session_with_its_history(data_dir, state_dir, tmp_path):
    centre = centre_voxel()
    with make_client(data_dir, state_dir=state_dir) as client:
        session = open_sphere(client)
        mirror = Mirror(client.get(f"/api/sessions/{session}").json()["shape"])
        assert client.post(f"/api/sessions/{session}/objects", json={"name": "tumour"}).json()["object"] == 1
        mirror.apply(click(client, session, centre))
        mirror.apply(click(client, session, [centre[0] + 6, centre[1], centre[2]], positive=False))
        assert client.post(f"/api/sessions/{session}/objects", json={"name": "edge"}).json()["object"] == 2
        mirror.apply(click(client, session, [centre[0] - 5, centre[1], centre[2]], label=2))
        mirror.apply(client.post(f"/api/sessions/{session}/undo", json={"object": 1}).json())
        before = labels_of(client, session, tmp_path)
        assert np.array_equal(before, mirror.array)
    (state_dir / "0123456789abcdef0123456789abcdef.npz").write_bytes(b"PK\x03\x04 truncated")  # skipped

    with make_client(data_dir, state_dir=state_dir) as client:
        listed = client.get("/api/sessions").json()["sessions"]
        assert [row["id"] for row in listed] == [session]
        assert listed[0]["name"] == "sphere.nii.gz" and not listed[0]["open"]
        assert listed[0]["objects"] == [{"label": 1, "name": "tumour"}, {"label": 2, "name": "edge"}]
        info = client.get(f"/api/sessions/{session}").json()  # reopened on the first request
        assert [{k: o[k] for k in ("label", "name")} for o in info["objects"]] == listed[0]["objects"]
        assert all(o["volume_ml"] >= 0 for o in info["objects"])  # a reopened session measures its objects
        assert np.array_equal(labels_of(client, session, tmp_path), before)
        mirror.apply(client.post(f"/api/sessions/{session}/redo", json={"object": 1}).json())
        mirror.apply(client.post(f"/api/sessions/{session}/undo", json={"object": 1}).json())
        assert np.array_equal(mirror.array, before)
        mirror.apply(client.post(f"/api/sessions/{session}/undo", json={"object": 1}).json())
        assert not (mirror.array == 1).any() and (mirror.array == 2).any()
        mirror.apply(click(client, session, centre, label=1))  # clicks continue from the saved masks
        assert np.array_equal(labels_of(client, session, tmp_path), mirror.array)
        assert client.get("/api/sessions").json()["sessions"][0]["open"]
        assert client.get("/api/sessions/0123456789abcdef0123456789abcdef").status_code == 404
        assert client.get("/api/sessions/../../etc").status_code == 404

        assert client.delete(f"/api/sessions/{session}").status_code == 200  # closing forgets it
        assert client.get("/api/sessions").json()["sessions"] == []
    assert not list(state_dir.glob(f"{session}*"))


def test_uploads_are_kept_and_old_records_deleted(data_dir, state_dir, tmp_path):
    import os
    import time

    volume_bytes = (data_dir / "sphere.nii.gz").read_bytes()
    with make_client(data_dir, state_dir=state_dir) as client:
        uploaded = client.post("/api/sessions/upload", files={"file": ("mine.nii.gz", volume_bytes)}).json()["id"]
        click(client, uploaded, centre_voxel())
        old = open_sphere(client)
        before = labels_of(client, uploaded, tmp_path)
    ancient = time.time() - 20 * 86400
    os.utime(state_dir / f"{old}.npz", (ancient, ancient))
    with make_client(data_dir, state_dir=state_dir, keep_days=14) as client:
        assert [row["id"] for row in client.get("/api/sessions").json()["sessions"]] == [uploaded]
        assert client.get(f"/api/sessions/{old}").status_code == 404
        assert client.get(f"/api/sessions/{uploaded}").json()["name"] == "mine.nii.gz"
        assert np.array_equal(labels_of(client, uploaded, tmp_path), before)


def test_without_a_state_folder_nothing_is_saved(data_dir, tmp_path):
    with make_client(data_dir) as client:
        session = open_sphere(client)
        click(client, session, centre_voxel())
        assert client.get("/api/sessions").json()["sessions"][0]["open"]
        assert "saves" not in client.get("/api/health").json()


def test_health_counts_the_records_written(data_dir, state_dir):
    with make_client(data_dir, state_dir=state_dir, sync_saves=True) as client:
        session = open_sphere(client)
        before = client.get("/api/health").json()["saves"]
        click(client, session, centre_voxel())
        click(client, session, centre_voxel(), positive=False)
        saves = client.get("/api/health").json()["saves"]
        assert saves["written"] >= before["written"] + 2 and saves["mean_ms"] > 0


def test_sessions_share_one_feature_budget_and_idle_ones_make_room(data_dir, state_dir):
    budget = 20.0  # MB: the stand-in model's embedding of a ROI is 8 MiB, so two fit
    with make_client(data_dir, state_dir=state_dir, cache_mb=budget, max_sessions=2) as client:
        store = client.app.state.store
        sessions = [open_sphere(client) for _ in range(3)]  # the third closes (and keeps) the first
        assert [row["open"] for row in client.get("/api/sessions").json()["sessions"]] == [True, True, False]
        encoder_runs = []
        for session in [*sessions, sessions[0]]:
            answer = click(client, session, centre_voxel())
            encoder_runs.append(answer["timings_ms"]["encoder"] > 0)
            assert store.features.total_bytes() <= budget * 2**20
        assert encoder_runs == [True, True, True, True]  # the first session's features were evicted
        assert click(client, sessions[0], centre_voxel())["timings_ms"]["encoder"] == 0  # now cached


def test_with_sync_saves_a_change_that_cannot_be_saved_is_rolled_back(data_dir, state_dir, tmp_path, monkeypatch):
    from fastsam3d.server.state import SessionRecords

    centre = centre_voxel()
    with make_client(data_dir, state_dir=state_dir, sync_saves=True) as client:
        session = client.post("/api/sessions", json={"path": "sphere.nii.gz"}).json()["id"]
        mirror = Mirror(client.get(f"/api/sessions/{session}").json()["shape"])
        mirror.apply(click(client, session, centre))
        saved = labels_of(client, session, tmp_path)
        write = SessionRecords.write

        def disk_full(self, meta, members):
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(SessionRecords, "write", disk_full)
        refused = client.post(
            f"/api/sessions/{session}/clicks", json={"points": [[centre[0] + 4, *centre[1:]]], "positive": False}
        )
        assert refused.status_code == 503 and "not applied" in refused.json()["detail"]
        assert np.array_equal(labels_of(client, session, tmp_path), saved)  # rolled back
        assert client.post(f"/api/sessions/{session}/objects", json={"name": "other"}).status_code == 503
        assert [o["name"] for o in client.get(f"/api/sessions/{session}").json()["objects"]] == ["object 1"]
        monkeypatch.setattr(SessionRecords, "write", write)
        mirror.apply(click(client, session, [centre[0] + 4, *centre[1:]], positive=False))
        assert np.array_equal(labels_of(client, session, tmp_path), mirror.array)
    with make_client(data_dir, state_dir=state_dir) as client:  # what was answered is what was saved
        assert np.array_equal(labels_of(client, session, tmp_path), mirror.array)
