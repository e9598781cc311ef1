from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from fastsam3d.errors import VolumeError
from fastsam3d.io import Volume, lps_to_ras, ras_to_lps, read_volume, write_volume

from .helpers import rotation


def _oblique(shape=(10, 12, 14)) -> Volume:
    array = np.arange(np.prod(shape), dtype=np.int16).reshape(shape)
    return Volume(array, np.array([0.7, 0.9, 2.5]), np.array([-12.5, 40.0, 7.25]), rotation(20, 10))


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd", ".mha"])
def test_round_trip_keeps_voxels_and_geometry(tmp_path, suffix):
    volume = _oblique()
    back = read_volume(write_volume(volume, tmp_path / f"v{suffix}"))
    assert np.array_equal(back.array, volume.array) and back.array.dtype == np.int16
    assert np.allclose(back.spacing, volume.spacing, atol=1e-5)
    assert np.allclose(back.origin, volume.origin, atol=1e-4)
    assert np.allclose(back.direction, volume.direction, atol=1e-5)


def test_index_order_matches_nibabel(tmp_path):
    array = np.zeros((10, 12, 14), np.float32)
    array[3, 5, 7] = 42
    path = write_volume(_oblique().with_array(array), tmp_path / "marker.nii.gz")
    data = nib.load(path).get_fdata()
    assert data.shape == (10, 12, 14) and data[3, 5, 7] == 42


def test_world_coordinates_match_itk():
    volume = _oblique()
    image = volume.to_sitk()
    index = np.array([[1.5, 2.0, 3.25], [9.0, 0.0, 13.0]])
    expected = [image.TransformContinuousIndexToPhysicalPoint(i.tolist()) for i in index]
    assert np.allclose(volume.index_to_world(index), expected)
    assert np.allclose(volume.world_to_index(volume.index_to_world(index)), index)
    assert np.allclose(volume.affine[:3, :3] @ index[0] + volume.affine[:3, 3], expected[0])


def test_repr_is_short_and_names_the_geometry():
    volume = Volume(np.zeros((50, 60, 70), np.int16), (0.8, 0.8, 2.5), (-100.5, 20.0, 3.0), np.diag([-1.0, -1.0, 1.0]))
    text = repr(volume)
    assert len(text) < 200, text
    assert "shape=(50, 60, 70)" in text and "spacing=(0.8, 0.8, 2.5) mm" in text and "int16" in text
    assert "orientation=RAS" in text and volume.orientation == "RAS"
    assert "oblique" in repr(Volume(np.zeros((4, 4, 4)), (1, 1, 1), (0, 0, 0), rotation(20, 10)))


def test_lps_ras():
    point = np.array([1.0, -2.0, 3.0])
    assert np.allclose(lps_to_ras(point), [-1, 2, 3]) and np.allclose(ras_to_lps(lps_to_ras(point)), point)


def test_dicom_series_folder(tmp_path):
    folder = tmp_path / "series"
    folder.mkdir()
    rng = np.random.default_rng(0)
    slices = rng.integers(0, 1000, size=(4, 16, 16)).astype(np.int16)  # (k, j, i)
    for k, pixels in enumerate(slices):
        image = sitk.GetImageFromArray(pixels)
        image.SetSpacing([0.8, 0.8])
        writer = sitk.ImageFileWriter()
        writer.KeepOriginalImageUIDOn()
        for tag, value in {
            "0008|0060": "CT",
            "0020|000d": "1.2.3",
            "0020|000e": "1.2.3.4",
            "0020|0013": str(k + 1),
            "0020|0032": f"0\\0\\{2.5 * k}",
            "0020|0037": "1\\0\\0\\0\\1\\0",
            "0028|0030": "0.8\\0.8",
            "0018|0050": "2.5",
            "0008|0018": f"1.2.3.4.{k + 1}",
        }.items():
            image.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"slice{k}.dcm"))
        writer.Execute(image)
    volume = read_volume(folder)
    assert volume.shape == (16, 16, 4)
    assert np.allclose(volume.spacing, [0.8, 0.8, 2.5], atol=1e-3)
    assert np.array_equal(volume.array, slices.transpose(2, 1, 0))
    assert read_volume(folder / "slice2.dcm").shape == (16, 16, 4)


def _write(image: sitk.Image, path):
    sitk.WriteImage(image, str(path))
    return path


@pytest.mark.parametrize(
    "make,fragment",
    [
        (lambda p: p / "missing.nii.gz", "no such file"),
        (lambda p: (p / "e").mkdir() or p / "e", "no DICOM series"),
        (lambda p: ((p / "x.nrrd").write_bytes(np.random.bytes(400)), p / "x.nrrd")[1], "corrupt"),
        (lambda p: _write(sitk.Image(8, 8, sitk.sitkInt16), p / "2d.nii.gz"), "2D"),
        (lambda p: _write(sitk.Image([8, 8, 1], sitk.sitkInt16), p / "slice.nrrd"), "2D"),
        (lambda p: _write(sitk.Image([4, 4, 4, 2], sitk.sitkInt16), p / "4d.nii.gz"), "4D"),
        (lambda p: _write(sitk.Image([4, 4, 4], sitk.sitkVectorFloat32, 3), p / "rgb.mha"), "components"),
    ],
)
def test_unreadable_inputs(tmp_path, make, fragment):
    with pytest.raises(VolumeError, match=fragment):
        read_volume(make(tmp_path))


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd"])
def test_nan_and_truncation_are_detected(tmp_path, suffix):
    array = np.ones((8, 8, 8), np.float32)
    array[1, 2, 3] = np.nan
    path = write_volume(_oblique((8, 8, 8)).with_array(array), tmp_path / f"nan{suffix}")
    with pytest.raises(VolumeError, match="1 NaN"):
        read_volume(path)
    good = write_volume(
        _oblique((40, 40, 40)).with_array(np.random.rand(40, 40, 40).astype(np.float32)), tmp_path / f"g{suffix}"
    )
    truncated = tmp_path / f"t{suffix}"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(VolumeError, match="corrupt, truncated"):
        read_volume(truncated)


def test_failed_write_keeps_existing_file_and_leaves_no_temp(tmp_path, monkeypatch):
    target = tmp_path / "seg.nii.gz"
    target.write_bytes(b"previous")

    def broken(image, path, *args, **kwargs):
        Path(path).write_bytes(b"partial")
        raise RuntimeError("disk full")

    monkeypatch.setattr(sitk, "WriteImage", broken)
    with pytest.raises(VolumeError, match="cannot write"):
        write_volume(_oblique(), target)
    assert target.read_bytes() == b"previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["seg.nii.gz"]
    with pytest.raises(VolumeError, match="use one of"):
        write_volume(_oblique(), tmp_path / "seg.png")


def test_nifti_with_a_trailing_singleton_axis_is_3d(tmp_path):
    array = np.random.rand(6, 7, 8, 1).astype(np.float32)
    nib.save(nib.Nifti1Image(array, np.eye(4)), tmp_path / "t.nii.gz")
    volume = read_volume(tmp_path / "t.nii.gz")
    assert volume.shape == (6, 7, 8) and np.array_equal(volume.array, array[..., 0])
    assert np.allclose(volume.direction, np.diag([-1.0, -1.0, 1.0]))  # RAS affine seen in LPS


def test_atomic_output_keeps_the_old_file_when_writing_fails(tmp_path):
    from fastsam3d.io import atomic_output

    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_output(target) as temp:
        temp.write_text("half")
        raise RuntimeError("killed")
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]
    with atomic_output(target) as temp:
        temp.write_text("new")
    assert target.read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]


def _itk_geometry(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    header = sitk.ImageFileReader()
    header.SetFileName(str(path))
    header.ReadImageInformation()
    return np.array(header.GetSpacing()), np.array(header.GetOrigin()), np.array(header.GetDirection()).reshape(3, 3)


@pytest.mark.parametrize("transforms", ["both", "qform", "sform", "conflicting", "neither"])
def test_nifti_geometry_is_itks_whichever_transforms_the_header_holds(tmp_path, transforms):
    rotated = np.eye(4)
    rotated[:3, :3] = rotation(20, 10) * [0.7, 0.9, 2.5]
    rotated[:3, 3] = [-12.5, 40.0, 7.25]
    other = np.diag([1.1, 1.2, 1.3, 1.0])
    image = nib.Nifti1Image(np.arange(10 * 12 * 14, dtype=np.int16).reshape(10, 12, 14), None)
    qform, sform = {
        "both": (rotated, rotated),
        "qform": (rotated, None),
        "sform": (None, rotated),
        "conflicting": (rotated, other),
        "neither": (None, None),
    }[transforms]
    image.header.set_zooms((0.7, 0.9, 2.5))
    image.set_qform(qform, 1 if qform is not None else 0)
    image.set_sform(sform, 2 if sform is not None else 0)
    path = tmp_path / "v.nii"
    nib.save(image, path)
    volume = read_volume(path)
    spacing, origin, direction = _itk_geometry(path)
    assert np.allclose(volume.spacing, spacing, atol=1e-5) and np.allclose(volume.origin, origin, atol=1e-4)
    assert np.allclose(volume.direction, direction, atol=1e-5)


def test_uncompressed_nifti_is_memory_mapped_and_others_are_not_copied(tmp_path):
    path = write_volume(_oblique(), tmp_path / "v.nii", compress=False)
    base = read_volume(path).array
    while isinstance(base, np.ndarray) and base.base is not None:
        base = base.base
    assert isinstance(base, np.memmap) or "mmap" in type(base).__name__
    nrrd = read_volume(write_volume(_oblique(), tmp_path / "v.nrrd")).array
    assert not nrrd.flags.owndata and np.array_equal(nrrd, _oblique().array)  # SimpleITK's buffer, kept alive


def test_gzipped_nifti_is_read_in_chunks_equal_to_nibabel(tmp_path, monkeypatch):
    from fastsam3d.io import readers

    monkeypatch.setattr(readers, "GZIP_CHUNK_BYTES", 1000)  # the 3360 voxel bytes take four chunks
    path = write_volume(_oblique(), tmp_path / "v.nii.gz")
    volume = read_volume(path)
    assert np.array_equal(volume.array, np.asarray(nib.load(path).dataobj)) and volume.array.dtype == np.int16
    truncated = tmp_path / "t.nii.gz"
    truncated.write_bytes(path.read_bytes()[:-40])
    with pytest.raises(VolumeError, match="corrupt, truncated"):
        read_volume(truncated)
