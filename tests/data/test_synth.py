"""SynthSeg-style synthesis from label maps: one intensity distribution per label, labels kept, reproducible."""

import numpy as np
import torch
from scipy import ndimage

from fastsam3d.data.streams import sample_rng
from fastsam3d.data.synth import BACKGROUND_FIRST, LabelMapAtlas, SynthesisSource, _paint
from fastsam3d.io import Volume


def _ball_atlas() -> LabelMapAtlas:
    """Three touching balls (labels 1-3) inside a body (soft tissue) in air, 3 mm voxels."""
    shape = (40, 40, 40)
    position = np.indices(shape).transpose(1, 2, 3, 0).astype(float)
    labels = np.zeros(shape, np.int16)
    for value, centre, radius in ((1, (14, 20, 20), 6), (2, (26, 20, 20), 6), (3, (20, 28, 20), 4)):
        labels[np.linalg.norm(position - centre, axis=-1) < radius] = value
    body = np.linalg.norm(position - 19.5, axis=-1) < 17
    hounsfield = np.where(body, 40.0, -1000.0).astype(np.float32)
    geometry = {"spacing": (3.0, 3.0, 3.0), "origin": np.zeros(3), "direction": np.diag([-1.0, -1.0, 1.0])}
    return LabelMapAtlas.from_volumes(Volume(hounsfield, **geometry), Volume(labels, **geometry))


def test_unlabelled_voxels_are_split_by_hounsfield_units():
    atlas = _ball_atlas()
    assert set(atlas.targets.tolist()) == {1, 2, 3}
    background = set(np.unique(atlas.labels[atlas.labels >= BACKGROUND_FIRST]).tolist())
    assert background == {BACKGROUND_FIRST, BACKGROUND_FIRST + 2}  # air and soft tissue


def test_one_intensity_distribution_per_label():
    labels = np.repeat(np.arange(4, dtype=np.int16), 2000).reshape(20, 20, 20)
    image = _paint(labels, np.random.default_rng(3))
    means = np.array([image[labels == v].mean() for v in range(4)])
    spreads = np.array([image[labels == v].std() for v in range(4)])
    assert spreads.max() < 0.07 and np.ptp(means) > 0.1
    assert all(abs(np.median(image[labels == v]) - means[v]) < 0.01 for v in range(4))


def test_deformation_keeps_every_label_and_its_topology():
    atlas = _ball_atlas()
    source = SynthesisSource([atlas], size=48)
    for index in range(6):
        labels, _, _ = source._deformed(atlas, sample_rng(7, index), structure=1 + index % 3)
        for value in (1, 2, 3):
            present = labels == value
            assert present[1:-1, 1:-1, 1:-1].sum() == present.sum() > 0, f"label {value} lost or cut"
            components, _ = ndimage.label(present)
            largest = np.bincount(components.ravel())[1:].max()
            # nearest-neighbour sampling may leave a stray voxel at a boundary, never a split structure
            assert present.sum() - largest <= 1, f"label {value} split by the deformation"


def test_stream_is_reproducible_by_seed():
    source = SynthesisSource([_ball_atlas()], size=32)
    first = source.draw(sample_rng(11, 5))
    again = source.draw(sample_rng(11, 5))
    other = source.draw(sample_rng(11, 6))
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not torch.equal(first[0], other[0])
    image, target = first
    assert image.shape == target.shape == (1, 32, 32, 32) and target.sum() > 0
