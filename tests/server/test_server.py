"""REST API: every endpoint through an in-process client, with the error paths."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from fastapi.testclient import TestClient

from fastsam3d.data.devdata import dev_manifest
from fastsam3d.io import Volume, read_volume, write_volume
from fastsam3d.server.app import create_app
from fastsam3d.server.protocol import decode_region
from fastsam3d.server.settings import ServerSettings

from ..helpers import IntensityModel, sphere_volume


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("data")
    volume, _ = sphere_volume()
    write_volume(volume, folder / "sphere.nii.gz")
    (folder / "notes.txt").write_text("not a volume")
    (folder.parent / "secret.nii.gz").write_bytes(b"outside the data folder")
    return folder


def make_client(data_dir: Path, **settings) -> TestClient:
    settings.setdefault("temp_dir", data_dir.parent / "server-temp")
    return TestClient(
        create_app(ServerSettings(data_dir=data_dir, **settings), model=IntensityModel()), base_url="http://127.0.0.1"
    )


@pytest.fixture
def client(data_dir):
    with make_client(data_dir) as client:
        yield client


def centre_voxel() -> list[int]:
    _, truth = sphere_volume()
    return [int(v) for v in np.argwhere(truth).mean(0).round()]


def open_sphere(client) -> str:
    response = client.post("/api/sessions", json={"path": "sphere.nii.gz"})
    assert response.status_code == 200, response.text
    return response.json()["id"]


def test_health_files_and_viewer_page(client):
    assert client.get("/api/health").json()["status"] == "ok"
    assert client.get("/api/files").json()["files"] == ["sphere.nii.gz"]
    assert client.get("/api/models").json()["models"][0]["name"] == "default"
    unknown = client.post("/api/sessions", json={"path": "sphere.nii.gz", "model": "no-such-model"})
    assert unknown.status_code == 400 and "choose from" in unknown.json()["detail"]
    page = client.get("/")
    assert page.status_code == 200 and "niivue.umd.js" in page.text
    assert client.get("/vendor/niivue.umd.js").status_code == 200
    assert "/api/sessions/{session_id}/clicks" in client.get("/openapi.json").json()["paths"]


def test_answers_carry_only_the_changed_region_and_rebuild_the_label_map(client):
    session = open_sphere(client)
    info = client.get(f"/api/sessions/{session}").json()
    assert info["shape"] == [120, 100, 44] and info["orientation"] and not info["dicom"]
    mirror = np.zeros(info["shape"], dtype=np.uint8)  # what a client keeps, patched from the answers

    def apply(answer):
        if answer["region"]:
            box, values = decode_region(answer["region"])
            mirror[box] = values
        return answer

    centre = centre_voxel()
    first = apply(client.post(f"/api/sessions/{session}/clicks", json={"points": [centre]}).json())
    _, values = decode_region(first["region"])
    assert values.any() and values.shape != tuple(info["shape"])  # a box, not the whole volume
    assert mirror[tuple(centre)] == first["object"] == 1
    assert first["timings_ms"]["encoder"] > 0
    second = apply(
        client.post(f"/api/sessions/{session}/clicks", json={"points": [centre], "positive": [False]}).json()
    )
    assert second["timings_ms"]["encoder"] == 0 and mirror[tuple(centre)] == 0  # cached embedding, excluded ball
    assert apply(client.post(f"/api/sessions/{session}/undo", json={}).json())["changed"]
    assert mirror[tuple(centre)] == 1
    apply(client.post(f"/api/sessions/{session}/redo", json={}).json())
    second_object = client.post(f"/api/sessions/{session}/objects", json={"name": "second"}).json()
    assert second_object["object"] == 2 and [o["name"] for o in second_object["objects"]][1] == "second"
    apply(
        client.post(
            f"/api/sessions/{session}/box", json={"corner_a": [10, 10, 5], "corner_b": [40, 40, 20], "object": 2}
        ).json()
    )
    apply(client.post(f"/api/sessions/{session}/reset", json={"object": 2}).json())
    downloaded = client.get(f"/api/sessions/{session}/labels?format=nii.gz")
    assert downloaded.status_code == 200
    saved = nib.load(_save(downloaded.content, ".nii.gz"))
    np.testing.assert_array_equal(np.asarray(saved.dataobj), mirror)
    nrrd = client.get(f"/api/sessions/{session}/labels?format=nrrd")
    volume = read_volume(_save(nrrd.content, ".nrrd"))
    np.testing.assert_array_equal(volume.array, mirror)
    np.testing.assert_allclose(volume.spacing, sphere_volume()[0].spacing)


def test_world_clicks_initial_mask_uncertainty_and_image(client, tmp_path):
    session = open_sphere(client)
    volume, truth = sphere_volume()
    world = volume.index_to_world(np.array([centre_voxel()], dtype=float))[0]
    answer = client.post(
        f"/api/sessions/{session}/clicks", json={"points": [world.tolist()], "coordinates": "lps"}
    ).json()
    assert decode_region(answer["region"])[1].any()
    uncertainty = client.post(f"/api/sessions/{session}/uncertainty", json={"samples": 4}).json()
    assert uncertainty["unit"] == "bits" and decode_region(uncertainty["region"])[1].dtype == np.uint8
    write_volume(volume.with_array(truth.astype(np.uint8)), tmp_path / "mask.nii.gz")
    client.post(f"/api/sessions/{session}/objects", json={})
    with open(tmp_path / "mask.nii.gz", "rb") as handle:
        answer = client.post(f"/api/sessions/{session}/mask", files={"file": ("mask.nii.gz", handle)}).json()
    assert answer["object"] == 2 and decode_region(answer["region"])[1].max() == 2
    short = Volume(truth.astype(np.uint8)[:, :, :40], volume.spacing, volume.origin, volume.direction)
    write_volume(short, tmp_path / "short.nii.gz")
    with open(tmp_path / "short.nii.gz", "rb") as handle:
        wrong = client.post(f"/api/sessions/{session}/mask", files={"file": ("short.nii.gz", handle)})
    assert wrong.status_code == 400 and "does not lie on the voxels" in wrong.json()["detail"]
    image = client.get(f"/api/sessions/{session}/image.nii.gz")
    assert nib.load(_save(image.content, ".nii.gz")).shape == (120, 100, 44)


def test_bad_requests_get_clear_errors(client):
    session = open_sphere(client)
    outside = client.post(f"/api/sessions/{session}/clicks", json={"points": [[500, 5, 5]]})
    assert outside.status_code == 400 and "outside the volume" in outside.json()["detail"]
    assert client.post(f"/api/sessions/{session}/clicks", json={"points": [[1, 2]]}).status_code in (400, 422)
    assert client.post("/api/sessions/nope/clicks", json={"points": [[1, 2, 3]]}).status_code == 404
    for path in ("../secret.nii.gz", "/etc/passwd", "notes.txt/../../secret.nii.gz"):
        response = client.post("/api/sessions", json={"path": path})
        assert response.status_code == 400 and "data folder" in response.json()["detail"]
    garbage = client.post("/api/sessions/upload", files={"file": ("scan.nii.gz", b"\x1f\x8b not really gzip")})
    assert garbage.status_code == 400 and "scan.nii.gz" in garbage.json()["detail"]
    assert client.post("/api/sessions/upload", files={"file": ("scan.exe", b"MZ")}).status_code == 400
    evil = io.BytesIO()
    with zipfile.ZipFile(evil, "w") as archive:
        archive.writestr("../../escape.dcm", b"x")
    response = client.post("/api/sessions/upload", files={"file": ("series.zip", evil.getvalue())})
    assert response.status_code == 400 and "outside its folder" in response.json()["detail"]
    assert client.get(f"/api/sessions/{session}/labels?format=dcm").status_code == 400  # not from DICOM
    assert client.post(f"/api/sessions/{session}/heartbeat").json() == {"status": "ok"}
    assert client.delete(f"/api/sessions/{session}").status_code == 200
    assert client.get(f"/api/sessions/{session}").status_code == 404


def test_upload_limits_api_key_session_cap_and_expiry(data_dir):
    volume_bytes = (data_dir / "sphere.nii.gz").read_bytes()
    with make_client(data_dir, max_upload_mb=0.1) as client:
        response = client.post("/api/sessions/upload", files={"file": ("big.nii.gz", volume_bytes)})
        assert response.status_code == 413
    with make_client(data_dir, api_key="s3cret", max_sessions=1) as client:
        assert client.get("/api/health").status_code == 401
        assert client.get("/api/health", headers={"X-API-Key": "wrong"}).status_code == 401
        assert client.get("/").status_code == 200  # the page itself asks for the key
        key = {"X-API-Key": "s3cret"}
        uploaded = client.post("/api/sessions/upload", files={"file": ("s.nii.gz", volume_bytes)}, headers=key)
        assert uploaded.status_code == 200 and uploaded.json()["shape"] == [120, 100, 44]
        second = client.post("/api/sessions", json={"path": "sphere.nii.gz"}, headers=key)
        assert second.status_code == 429 and "limit" in second.json()["detail"]
    with make_client(data_dir, idle_seconds=0.0) as client:
        session = open_sphere(client)
        assert client.get(f"/api/sessions/{session}").status_code == 404  # expired at once


def test_dicom_series_upload_and_dicom_seg_export(client):
    manifest = dev_manifest()
    if manifest is None:
        pytest.skip("development data not fetched: run `fastsam3d data fetch` (scripts/install.sh does)")
    import pydicom

    series = manifest.parent / "reference_files" / "example_ct_dicom"
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as handle:
        for file in sorted(series.iterdir()):
            handle.write(file, f"patient/series/{file.name}")
    info = client.post("/api/sessions/upload", files={"file": ("ct.zip", archive.getvalue())}).json()
    assert info["dicom"] and info["shape"] == [512, 512, 20]
    session = info["id"]
    client.post(f"/api/sessions/{session}/clicks", json={"points": [[256, 256, 10]]})
    exported = client.get(f"/api/sessions/{session}/labels?format=dcm")
    assert exported.status_code == 200, exported.text
    segmentation = pydicom.dcmread(io.BytesIO(exported.content))
    assert segmentation.Modality == "SEG" and len(segmentation.SegmentSequence) == 1
    assert 1 <= int(segmentation.NumberOfFrames) <= 20


def _save(content: bytes, suffix: str) -> str:
    import tempfile

    with tempfile.NamedTemporaryFile(suffix=suffix, delete=False) as handle:
        handle.write(content)
    return handle.name
