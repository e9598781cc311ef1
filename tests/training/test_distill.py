"""Teacher features, layer-wise progressive distillation, and the assembled student."""

import csv

import pytest
import torch
from safetensors.torch import load_file

from fastsam3d.errors import FastSAM3DError
from fastsam3d.registry import build_model, load_model, save_model
from fastsam3d.training.distill import TeacherFeatures, distill, layer_pairs, prepare_labels
from fastsam3d.training.trainer import TrainSettings


def test_layer_pairs_follow_the_official_schedule():
    assert layer_pairs(6, 12) == [(1, 1), (2, 2), (3, 3), (-1, -1)]  # student block 2k <- teacher block 2k, then necks
    assert layer_pairs(6, 12, "uniform") == [(1, 2), (2, 4), (3, 6), (-1, -1)]
    assert layer_pairs(4, 8) == [(1, 1), (2, 2), (-1, -1)]
    with pytest.raises(FastSAM3DError):
        layer_pairs(6, 8, "uniform")
    with pytest.raises(FastSAM3DError):
        layer_pairs(8, 4)


@pytest.fixture(scope="module")
def teacher_features(tmp_path_factory):
    folder = tmp_path_factory.mktemp("distill")
    torch.manual_seed(0)
    teacher = build_model("tiny-teacher")
    save_model(teacher, folder / "teacher.safetensors")
    labels = prepare_labels(
        str(folder / "teacher.safetensors"), folder / "labels", 4, TrainSettings(seed=3), progress=False
    )
    return folder, teacher, labels


def test_prepared_features_are_the_teachers(teacher_features):
    _, teacher, labels = teacher_features
    data = TeacherFeatures(labels)
    assert len(data) == 4
    image, features = data[1]
    assert image.shape == (1, 64, 64, 64)
    with torch.no_grad():
        _, expected = teacher.image_encoder(image[None], return_intermediates=True)
    assert len(features) == len(expected) == 4  # embed, after blocks 2 and 4, neck
    for stored, fresh in zip(features, expected, strict=True):
        torch.testing.assert_close(stored, fresh[0], atol=2e-2, rtol=1e-2)  # stored in fp16
    stamp = (labels / "crop_00001.safetensors").stat().st_mtime_ns
    prepare_labels(str(teacher_features[0] / "teacher.safetensors"), labels, 4, TrainSettings(seed=3), progress=False)
    assert (labels / "crop_00001.safetensors").stat().st_mtime_ns == stamp  # resumable: kept


def test_progressive_distillation_lowers_the_trained_layers_loss(teacher_features):
    folder, teacher, labels = teacher_features
    student_path = distill(
        labels, folder / "student", "tiny-student", epochs=5, layer_epochs=3, accumulation=1, lr=2e-3, progress=False
    )
    rows = list(csv.reader((folder / "student" / "distill.csv").read_text().splitlines()))
    header, rows = rows[0], rows[1:]
    assert header[:5] == ["epoch", "training", "mse s2<-t2", "mse s4<-t4", "mse neck<-neck"]
    assert [r[1] for r in rows] == ["s2<-t2"] * 3 + ["s4<-t4"] * 2  # a new layer every 3 epochs
    first_pair = [float(r[2]) for r in rows[:3]]
    assert first_pair[-1] < 0.7 * first_pair[0], first_pair
    student = load_model(student_path)
    assert student.config.name == "tiny-student"
    for part in ("prompt_encoder", "mask_decoder"):  # the teacher's, unchanged
        for key, value in getattr(teacher, part).state_dict().items():
            torch.testing.assert_close(getattr(student, part).state_dict()[key], value)
    encoder = load_file(str(folder / "student" / "student.safetensors"))
    assert any(k.startswith("image_encoder.blocks.3.") for k in encoder)


def test_incompatible_student_is_refused(teacher_features):
    folder, _, labels = teacher_features
    with pytest.raises(FastSAM3DError, match="does not match teacher"):
        distill(labels, folder / "bad", "compact", epochs=1, progress=False)


def test_distillation_needs_prepared_features(tmp_path):
    with pytest.raises(FastSAM3DError, match="prepare-labels"):
        distill(tmp_path, tmp_path / "out", "tiny-student", epochs=1, progress=False)
