"""``fastsam3d prepare nnunet``: nnU-Net folder -> one folder per class, 1.5 mm, binary masks."""

import json

import numpy as np
import pytest

from fastsam3d.cli import main
from fastsam3d.evaluation.datasets import load_cases
from fastsam3d.io import Volume, read_volume, write_volume


def _world_centroid(volume: Volume, mask: np.ndarray) -> np.ndarray:
    return volume.index_to_world(np.argwhere(mask).mean(0)[None])[0]


@pytest.fixture
def nnunet(tmp_path):
    """Dataset003_Organs: 2 cases, 0.8 x 0.8 x 3 mm, the second oblique; liver, spleen, a tiny lesion."""
    root = tmp_path / "Dataset003_Organs"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    shape, spacing = (50, 40, 16), np.array([0.8, 0.8, 3.0])
    angle = np.radians(20)
    oblique = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    for index, direction in enumerate((np.eye(3), oblique)):
        labels = np.zeros(shape, np.uint8)
        labels[5:25, 5:30, 3:12] = 1  # liver
        if index == 0:
            labels[30:45, 10:30, 4:10] = 2  # spleen only in case 0
        labels[40, 35, 13] = 3  # a one-voxel lesion: 1.9 mm³
        image = (np.array([0, 60, 45, 90], np.int16)[labels] + np.random.default_rng(index).normal(0, 5, shape)).astype(np.int16)
        origin = np.array([-20.0, 10.0, 5.0 * index])
        write_volume(Volume(image, spacing, origin, direction), root / "imagesTr" / f"case{index}_0000.nii.gz")
        write_volume(Volume(labels, spacing, origin, direction), root / "labelsTr" / f"case{index}.nii.gz")
    (root / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "CT"}, "labels": {"background": 0, "liver": 1, "spleen": 2, "lesion": 3},
        "numTraining": 2, "file_ending": ".nii.gz"}))
    return root


def test_prepare_writes_one_folder_per_class(nnunet, tmp_path, capsys):
    out = tmp_path / "prepared"
    assert main(["prepare", "nnunet", str(nnunet), str(out)]) == 0
    report = capsys.readouterr().out
    assert "2 cases, 3 class masks in 2 classes" in report
    assert "case1 spleen absent" in report and "case0 lesion 1.9 mm³ < 10" in report
    for case, classes in (("case0", ("liver", "spleen")), ("case1", ("liver",))):
        source_image = read_volume(nnunet / "imagesTr" / f"{case}_0000.nii.gz")
        source_labels = read_volume(nnunet / "labelsTr" / f"{case}.nii.gz")
        for class_id, name in enumerate(("liver", "spleen"), start=1):
            folder = out / name / "Organs"
            label_path = folder / "labelsTr" / f"{case}.nii.gz"
            assert label_path.exists() == (name in classes)
            if name not in classes:
                continue
            image = read_volume(folder / "imagesTr" / f"{case}.nii.gz")
            mask = read_volume(label_path)
            assert np.allclose(image.spacing, 1.5) and np.allclose(mask.spacing, 1.5)
            assert np.allclose(image.direction, source_image.direction) and mask.shape == image.shape
            assert set(np.unique(mask.array)) == {0, 1}
            shift = _world_centroid(mask, mask.array > 0) - _world_centroid(source_labels, source_labels.array == class_id)
            assert np.linalg.norm(shift) < 1.5, shift  # the mask stays where it was
    assert not (out / "lesion").exists()
    cases = load_cases(out)
    assert sorted((c.name.split("/")[0], c.classes[1]) for c in cases) == [("liver", "liver"), ("liver", "liver"), ("spleen", "spleen")]


def test_prepare_refuses_to_overwrite_and_bad_input(nnunet, tmp_path, capsys):
    out = tmp_path / "prepared"
    assert main(["prepare", "nnunet", str(nnunet), str(out), "--classes", "liver"]) == 0
    assert not (out / "spleen").exists()
    assert main(["prepare", "nnunet", str(nnunet), str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(["prepare", "nnunet", str(nnunet), str(out), "--overwrite"]) == 0
    assert main(["prepare", "nnunet", str(tmp_path / "nothing"), str(out)]) == 2
    assert "no dataset.json" in capsys.readouterr().err
    (nnunet / "labelsTr" / "case1.nii.gz").write_bytes(b"not a nifti file")
    assert main(["prepare", "nnunet", str(nnunet), str(tmp_path / "again")]) == 0
    assert "case1 unreadable" in capsys.readouterr().out
