"""Volumes kept in memory-mapped files: a session holds the pages of its ROIs, not the whole array."""

from __future__ import annotations

import numpy as np
import pytest

from fastsam3d.io import Volume, drop_mapped_pages, memory_map_of, read_volume, write_volume
from fastsam3d.server.memory import mapped

from ..helpers import sphere_volume
from .test_server import centre_voxel, make_client


@pytest.mark.parametrize("order", ["C", "F"])
def test_a_mapped_volume_equals_the_original_and_reads_after_its_pages_are_dropped(tmp_path, order):
    array = np.array(np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6), order=order)
    volume = Volume(array, np.array([0.5, 1.0, 2.0]), np.array([1.0, 2.0, 3.0]), np.eye(3))
    copy = mapped(volume, tmp_path / "voxels.npy")
    assert memory_map_of(volume.array) is None and memory_map_of(copy.array) is not None
    assert np.array_equal(copy.array, array) and copy.array.dtype == np.int16
    assert copy.array.flags.f_contiguous == (order == "F")  # no reordering copy
    assert np.array_equal(copy.spacing, volume.spacing) and np.array_equal(copy.origin, volume.origin)
    assert not copy.array.flags.writeable
    assert mapped(copy, tmp_path / "again.npy") is copy and not (tmp_path / "again.npy").exists()
    drop_mapped_pages(copy.array)
    assert np.array_equal(copy.array, array)  # read again from the file
    drop_mapped_pages(volume.array)  # a heap array: nothing to do


def test_an_uncompressed_nifti_is_used_where_it_lies(tmp_path):
    write_volume(sphere_volume()[0], tmp_path / "sphere.nii")
    volume = read_volume(tmp_path / "sphere.nii")
    assert mapped(volume, tmp_path / "voxels.npy") is volume


def test_server_sessions_map_their_voxels_and_keep_the_intensity_range(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    volume, _ = sphere_volume()
    write_volume(volume, data / "sphere.nii.gz")
    with make_client(data) as client:
        opened = client.post("/api/sessions", json={"path": "sphere.nii.gz"}).json()
        entry = client.app.state.store.get(opened["id"])
        assert memory_map_of(entry.session.volume.array) is not None
        assert (entry.folder / "voxels.npy").is_file()  # in the session's folder, removed with it
        assert opened["intensity"] == [float(volume.array.min()), float(volume.array.max())]
        answer = client.post(f"/api/sessions/{opened['id']}/clicks", json={"points": [centre_voxel()]})
        assert answer.status_code == 200 and answer.json()["region"]


def test_a_disk_that_cannot_take_the_voxels_keeps_the_volume_in_memory(tmp_path, monkeypatch, caplog):
    volume = Volume(np.ones((4, 5, 6), dtype=np.int16), np.ones(3), np.zeros(3), np.eye(3))

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np.lib.format, "open_memmap", disk_full)
    assert mapped(volume, tmp_path / "voxels.npy") is volume
    assert not (tmp_path / "voxels.npy").exists() and "keeping a volume in memory" in caplog.text
