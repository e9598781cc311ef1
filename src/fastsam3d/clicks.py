"""Simulated clicks (where a user would click next, given the prediction and the truth) and the Dice
score that judges the result. Used by evaluation, training, the demo and the 2D engine."""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def deepest_error(
    prediction: np.ndarray, target: np.ndarray, spacing=(1.0, 1.0, 1.0)
) -> tuple[np.ndarray, np.ndarray, bool] | None:
    """The error type whose voxel lies farthest (in mm) from the error's border.

    Errors are false negatives (``target & ~prediction``: an include click) and false positives
    (``prediction & ~target``: an exclude click); false negatives win ties. Returns the depth map
    on the error's bounding box, the box's offset (3,), and whether it is a false negative; None
    when the prediction is perfect.
    """
    best: tuple[np.ndarray, np.ndarray, bool] | None = None
    for error, positive in ((target & ~prediction, True), (prediction & ~target, False)):
        if not error.any():
            continue
        box = ndimage.find_objects(error.astype(np.uint8))[0]
        depth = ndimage.distance_transform_edt(np.pad(error[box], 1), sampling=spacing)[1:-1, 1:-1, 1:-1]
        if best is None or depth.max() > best[0].max():
            best = (depth, np.array([s.start for s in box]), positive)
    return best


def center_click(prediction: np.ndarray, target: np.ndarray, spacing=(1.0, 1.0, 1.0)) -> tuple[np.ndarray, bool] | None:
    """The interior-most voxel of the largest error component (RITM / nnInteractive convention).

    The click goes to the deepest voxel of :func:`deepest_error` (it lies in the component with
    the largest depth). Returns (voxel index (3,), positive) or None when the prediction is perfect.
    """
    found = deepest_error(prediction, target, spacing)
    if found is None:
        return None
    depth, offset, positive = found
    return np.array(np.unravel_index(int(np.argmax(depth)), depth.shape)) + offset, positive


def dice(prediction: np.ndarray, target: np.ndarray) -> float:
    """Dice coefficient of two boolean masks (1.0 when both are empty)."""
    total = int(prediction.sum()) + int(target.sum())
    return 1.0 if total == 0 else 2.0 * int((prediction & target).sum()) / total
