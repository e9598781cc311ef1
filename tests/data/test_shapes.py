import numpy as np

from fastsam3d.data.shapes import SyntheticShapes


def test_synthetic_samples_are_deterministic_and_valid():
    image, target = SyntheticShapes(size=64, seed=3).sample_object(min_voxels=50)
    again, target_again = SyntheticShapes(size=64, seed=3).sample_object(min_voxels=50)
    assert image.shape == target.shape == (64, 64, 64) and image.dtype == np.float32 and target.dtype == bool
    assert np.array_equal(image, again) and np.array_equal(target, target_again)
    assert target.sum() >= 50 and np.isfinite(image).all()
    inside, outside = image[target].mean(), image[~target].mean()
    assert not np.isclose(inside, outside)
