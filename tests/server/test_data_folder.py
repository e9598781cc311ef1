"""The --data folder: what the file menu lists is exactly what opens, symlinks included."""

import os

import pytest
from fastapi.testclient import TestClient

from fastsam3d.io import write_volume
from fastsam3d.server.app import create_app
from fastsam3d.server.settings import ServerSettings

from ..helpers import IntensityModel, sphere_volume


@pytest.fixture
def client(tmp_path):
    data, elsewhere = tmp_path / "data", tmp_path / "elsewhere"
    (data / "cases").mkdir(parents=True)
    elsewhere.mkdir()
    volume, _ = sphere_volume()
    write_volume(volume, data / "cases" / "real.nii.gz")
    write_volume(volume, elsewhere / "private.nii.gz")
    os.symlink(data / "cases" / "real.nii.gz", data / "inside.nii.gz")  # resolves inside the folder
    os.symlink("cases/real.nii.gz", data / "relative.nii.gz")
    os.symlink(elsewhere / "private.nii.gz", data / "outside.nii.gz")  # resolves outside it
    os.symlink(elsewhere, data / "linked-folder")
    os.symlink(data / "loop.nii.gz", data / "loop.nii.gz")
    settings = ServerSettings(data_dir=data, temp_dir=tmp_path / "temp")
    with TestClient(create_app(settings, model=IntensityModel()), base_url="http://127.0.0.1") as client:
        yield client


def test_listed_files_open_and_symlinks_out_of_the_folder_are_neither(client):
    listed = client.get("/api/files").json()["files"]
    assert listed == ["cases/real.nii.gz", "inside.nii.gz", "relative.nii.gz"]
    for path in listed:
        response = client.post("/api/sessions", json={"path": path})
        assert response.status_code == 200, response.text
        client.delete(f"/api/sessions/{response.json()['id']}")
    for path in ("outside.nii.gz", "linked-folder/private.nii.gz", "loop.nii.gz", "../elsewhere/private.nii.gz"):
        response = client.post("/api/sessions", json={"path": path})
        assert response.status_code == 400 and "no volume" in response.json()["detail"], (path, response.text)
