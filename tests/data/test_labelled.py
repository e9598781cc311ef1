"""Training crops from labelled volumes: on the inference grid, around the chosen structure."""

import json
import pickle

import numpy as np
import pytest
import torch
from scipy import ndimage

from fastsam3d.data.devdata import dev_manifest
from fastsam3d.data.labelled import LabelledCrops
from fastsam3d.data.streams import IndexedStream, MixedSource, SyntheticSource, sample_rng
from fastsam3d.errors import FastSAM3DError
from fastsam3d.io import Volume, write_volume


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """Two cases: an oblique anisotropic volume with a bright ball (1) and a dark box (2)."""
    root = tmp_path_factory.mktemp("labelled")
    shape, spacing = (60, 50, 24), np.array([1.2, 1.0, 3.0])
    grid = np.indices(shape).transpose(1, 2, 3, 0) * spacing
    labels = np.zeros(shape, np.uint8)
    labels[np.linalg.norm(grid - [30, 25, 36], axis=-1) < 14] = 1
    labels[5:20, 30:45, 4:12] = 2
    intensity = np.array([100.0, 400.0, 20.0], np.float32)
    rotation = np.array([[0, -1, 0], [1, 0, 0], [0, 0, 1]], float)  # axes swapped and flipped
    cases = []
    for name, direction in (("a", np.eye(3)), ("b", rotation)):
        write_volume(Volume(intensity[labels], spacing, np.zeros(3), direction), root / f"{name}.nii.gz")
        write_volume(Volume(labels, spacing, np.zeros(3), direction), root / f"{name}_seg.nii.gz")
        cases.append({"name": name, "image": f"{name}.nii.gz", "label": f"{name}_seg.nii.gz"})
    (root / "dataset.json").write_text(json.dumps({"labels": {"1": "ball", "2": "box"}, "cases": cases}))
    return root / "dataset.json"


def test_crops_lie_on_the_target_structure(dataset):
    source = LabelledCrops(str(dataset), size=32, augment=False, min_volume_mm3=100)
    for seed in range(6):
        image, target = source.draw(np.random.default_rng(seed))
        assert image.shape == target.shape == (1, 32, 32, 32) and image.dtype == target.dtype == torch.float32
        assert set(target.unique().tolist()) == {0.0, 1.0} and target.sum() >= 20
        mask = target[0].numpy() > 0
        core = torch.from_numpy(ndimage.binary_erosion(mask, iterations=2))
        ring = torch.from_numpy(ndimage.binary_dilation(mask, iterations=3) & ~ndimage.binary_dilation(mask))
        values = image[0][core]  # one structure of uniform intensity, distinct from its surroundings
        assert core.any() and values.std() < 0.05 and abs(values.mean() - image[0][ring].median()) > 0.3
    again = source.draw(np.random.default_rng(5))
    assert torch.equal(again[0], image) and torch.equal(again[1], target)


def test_augmented_crops_stay_valid_and_vary(dataset):
    source = LabelledCrops(str(dataset), size=32, min_volume_mm3=100)
    draws = [source.draw(np.random.default_rng(seed)) for seed in range(4)]
    assert all(t.sum() >= 20 and torch.isfinite(i).all() for i, t in draws)
    assert all(type(i) is torch.Tensor and type(t) is torch.Tensor for i, t in draws)  # no MONAI MetaTensor
    assert not torch.equal(draws[0][0], draws[1][0])


def test_crops_pickle_for_spawned_loader_workers(dataset):
    source = LabelledCrops(str(dataset), size=32, min_volume_mm3=100)
    first = source.draw(np.random.default_rng(7))  # fills the cache, which is not pickled
    copy = pickle.loads(pickle.dumps(source))
    assert not copy._cache and torch.equal(copy.draw(np.random.default_rng(7))[0], first[0])


def test_case_selection_and_errors(dataset):
    only_b = LabelledCrops(str(dataset), size=32, include=["b"], min_volume_mm3=100)
    assert [c.name for c in only_b.cases] == ["b"]
    assert [c.name for c in LabelledCrops(str(dataset), size=32, exclude=["b"]).cases] == ["a"]
    with pytest.raises(FastSAM3DError, match="no cases"):
        LabelledCrops(str(dataset), include=["zzz"])
    with pytest.raises(FastSAM3DError, match="no structure"):
        LabelledCrops(str(dataset), size=32, min_volume_mm3=1e9).draw(np.random.default_rng(0))


def test_mixed_source_proportions(dataset):
    real = LabelledCrops(str(dataset), size=32, augment=False, min_volume_mm3=100)

    class Counting:
        def __init__(self, source):
            self.source, self.count = source, 0

        def draw(self, rng):
            self.count += 1
            return self.source.draw(rng)

    synthetic, labelled = Counting(SyntheticSource(32, min_voxels=20)), Counting(real)
    mixed = MixedSource([synthetic, labelled], [0.25, 0.75])
    for index in range(40):
        mixed.draw(sample_rng(0, index))
    assert 20 <= labelled.count <= 38 and synthetic.count + labelled.count == 40
    stream = IndexedStream(mixed, batch_size=2, seed=0)
    assert next(iter(stream))[0].shape == (2, 1, 32, 32, 32)


@pytest.mark.skipif(dev_manifest() is None, reason="development data not fetched (fastsam3d data fetch)")
def test_crops_from_the_development_ct():
    source = LabelledCrops(str(dev_manifest()), include=["ct"])
    image, target = source.draw(np.random.default_rng(0))
    assert image.shape == (1, 128, 128, 128) and 20 <= target.sum() < 128**3 / 2
