"""``fastsam3d prepare nnunet``: nnU-Net folder -> one folder per class, 1.5 mm, binary masks."""

import json
import shutil

import numpy as np
import pytest

from fastsam3d.cli import main
from fastsam3d.evaluation.datasets import load_cases
from fastsam3d.io import Volume, read_volume, write_volume


def _world_centroid(volume: Volume, mask: np.ndarray) -> np.ndarray:
    return volume.index_to_world(np.argwhere(mask).mean(0)[None])[0]


def _world_centre(volume: Volume) -> np.ndarray:
    return volume.index_to_world((np.array(volume.shape) - 1) / 2)


@pytest.fixture
def nnunet(tmp_path):
    """Dataset003_Organs: 2 cases, 0.8 x 0.8 x 3 mm, the second oblique; liver, spleen, a tiny lesion;
    plus a test case in imagesTs/labelsTs that must not be converted."""
    root = tmp_path / "Dataset003_Organs"
    for folder in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
        (root / folder).mkdir(parents=True)
    shape, spacing = (50, 40, 16), np.array([0.8, 0.8, 3.0])
    angle = np.radians(20)
    oblique = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    for index, direction in enumerate((np.eye(3), oblique)):
        labels = np.zeros(shape, np.uint8)
        labels[5:25, 5:30, 3:12] = 1  # liver
        if index == 0:
            labels[30:45, 10:30, 4:10] = 2  # spleen only in case 0
        labels[40:42, 34:36, 13] = 3  # a lesion of 4 voxels: 7.7 mm³
        noise = np.random.default_rng(index).normal(0, 5, shape)
        image = (np.array([0, 60, 45, 90], np.int16)[labels] + noise).astype(np.int16)
        origin = np.array([-20.0, 10.0, 5.0 * index])
        write_volume(Volume(image, spacing, origin, direction), root / "imagesTr" / f"case{index}_0000.nii.gz")
        write_volume(Volume(labels, spacing, origin, direction), root / "labelsTr" / f"case{index}.nii.gz")
    shutil.copy(root / "imagesTr" / "case0_0000.nii.gz", root / "imagesTs" / "test0_0000.nii.gz")
    shutil.copy(root / "labelsTr" / "case0.nii.gz", root / "labelsTs" / "test0.nii.gz")
    (root / "dataset.json").write_text(
        json.dumps(
            {
                "channel_names": {"0": "CT"},
                "labels": {"background": 0, "liver": 1, "spleen": 2, "lesion": 3},
                "numTraining": 2,
                "file_ending": ".nii.gz",
            }
        )
    )
    return root


def test_prepare_writes_one_folder_per_class(nnunet, tmp_path, capsys):
    out = tmp_path / "prepared"
    assert main(["prepare", "nnunet", str(nnunet), str(out)]) == 0
    report = capsys.readouterr().out
    assert "2 cases, 3 class masks in 2 classes" in report and "spleen: 1 of 2 cases" in report
    assert "spleen: absent in case1" in report and "lesion: under 10 mm³ in case0, case1" in report
    for case, classes in (("case0", ("liver", "spleen")), ("case1", ("liver",))):
        source_image = read_volume(nnunet / "imagesTr" / f"{case}_0000.nii.gz")
        source_labels = read_volume(nnunet / "labelsTr" / f"{case}.nii.gz")
        for class_id, name in enumerate(("liver", "spleen"), start=1):
            folder = out / name / "ct_Organs"
            label_path = folder / "labelsTr" / f"{case}.nii.gz"
            assert label_path.exists() == (name in classes)
            if name not in classes:
                continue
            image = read_volume(folder / "imagesTr" / f"{case}.nii.gz")
            mask = read_volume(label_path)
            assert np.allclose(image.spacing, 1.5) and np.allclose(mask.spacing, 1.5) and mask.shape == image.shape
            assert image.shape == (26, 21, 32)  # floor(size * spacing / 1.5): never outside the source
            assert np.allclose(image.direction, source_image.direction)
            assert np.allclose(_world_centre(image), _world_centre(source_image))
            assert mask.array.dtype == np.uint8 and set(np.unique(mask.array)) == {0, 1}
            shift = _world_centroid(mask, mask.array > 0) - _world_centroid(
                source_labels, source_labels.array == class_id
            )
            assert np.linalg.norm(shift) < 1.5, shift  # the mask stays where it was
    images = [out / name / "ct_Organs" / "imagesTr" / "case0.nii.gz" for name in ("liver", "spleen")]
    assert images[0].stat().st_ino == images[1].stat().st_ino  # resampled once, linked
    assert not (out / "lesion").exists()
    assert not any(out.rglob("test0*"))  # imagesTs is not training data
    cases = load_cases(out)
    assert sorted((c.name, c.classes[1]) for c in cases) == [
        ("liver/ct_Organs/case0", "liver"),
        ("liver/ct_Organs/case1", "liver"),
        ("spleen/ct_Organs/case0", "spleen"),
    ]


def test_prepare_classes_overwrite_and_nnunet_v1(nnunet, tmp_path, capsys):
    out = tmp_path / "prepared"
    assert main(["prepare", "nnunet", str(nnunet), str(out), "--classes", "liver,3", "--min-volume", "0"]) == 0
    assert (out / "lesion" / "ct_Organs" / "labelsTr" / "case0.nii.gz").exists() and not (out / "spleen").exists()
    assert main(["prepare", "nnunet", str(nnunet), str(out)]) == 2
    assert "pass --overwrite" in capsys.readouterr().err
    assert main(["prepare", "nnunet", str(nnunet), str(out), "--overwrite"]) == 0
    assert not (out / "lesion" / "ct_Organs").exists()  # replaced, not merged: now under 10 mm³
    (nnunet / "dataset.json").write_text(
        json.dumps(
            {  # nnU-Net v1: {id: name}, modality, training pairs
                "modality": {"0": "MRI"},
                "labels": {"0": "background", "1": "liver", "2": "spleen"},
                "training": [
                    {"image": f"./imagesTr/case{i}.nii.gz", "label": f"./labelsTr/case{i}.nii.gz"} for i in (0, 1)
                ],
            }
        )
    )
    assert main(["prepare", "nnunet", str(nnunet), str(out), "--classes", "spleen"]) == 0
    assert (out / "spleen" / "mri_Organs" / "labelsTr" / "case0.nii.gz").exists()


def test_prepare_bad_input(nnunet, tmp_path, capsys):
    out = tmp_path / "prepared"

    def error(*extra: str) -> str:
        assert main(["prepare", "nnunet", *extra]) == 2
        message = capsys.readouterr().err.splitlines()[-1]  # after the progress bar and warnings, if any
        assert message.startswith("fastsam3d: error: "), message
        return message

    assert "no such folder" in error(str(tmp_path / "nothing"), str(out))
    assert "unknown" in error(str(nnunet), str(out), "--classes", "liver,unknown")
    assert "--spacing must be positive" in error(str(nnunet), str(out), "--spacing", "0")
    shifted = read_volume(nnunet / "labelsTr" / "case0.nii.gz")
    write_volume(
        Volume(shifted.array, shifted.spacing * 2, shifted.origin, shifted.direction),
        nnunet / "labelsTr" / "case0.nii.gz",
    )
    (nnunet / "labelsTr" / "case1.nii.gz").write_bytes(b"not a nifti file")
    assert "none of the 2 cases could be read; first: label map" in error(str(nnunet), str(out))
    write_volume(shifted, nnunet / "labelsTr" / "case0.nii.gz")
    assert main(["prepare", "nnunet", str(nnunet), str(out)]) == 0  # a corrupt case is skipped, with a warning
    captured = capsys.readouterr()
    assert "warning: skipped case case1: cannot read" in captured.err and "case1.nii.gz" in captured.err
    assert "skipped 1 unreadable cases:\n  case1: cannot read" in captured.out
    shutil.rmtree(nnunet / "imagesTr")
    assert "has no imagesTr" in error(str(nnunet), str(out))
    (nnunet / "dataset.json").unlink()
    assert "has no dataset.json" in error(str(nnunet), str(out))
