"""Simulated clicks: where a user would click next, given the prediction and the truth."""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def center_click(prediction: np.ndarray, target: np.ndarray, spacing=(1.0, 1.0, 1.0)) -> tuple[np.ndarray, bool] | None:
    """The interior-most voxel of the largest error component (RITM / nnInteractive convention).

    Errors are false negatives (``target & ~prediction``: an include click) and false positives
    (``prediction & ~target``: an exclude click). The click goes to the voxel farthest (in mm)
    from the border of the error component with the largest such distance. Returns
    (voxel index (3,), positive) or None when the prediction is perfect.
    """
    best: tuple[float, np.ndarray, bool] | None = None
    for error, positive in ((target & ~prediction, True), (prediction & ~target, False)):
        if not error.any():
            continue
        box = ndimage.find_objects(error.astype(np.uint8))[0]
        depth = ndimage.distance_transform_edt(np.pad(error[box], 1), sampling=spacing)[1:-1, 1:-1, 1:-1]
        flat = int(np.argmax(depth))  # the deepest voxel lies in the component with the largest depth
        if best is None or depth.flat[flat] > best[0]:
            best = (float(depth.flat[flat]), np.array(np.unravel_index(flat, depth.shape)) + [s.start for s in box], positive)
    return None if best is None else (best[1], best[2])


def dice(prediction: np.ndarray, target: np.ndarray) -> float:
    """Dice coefficient of two boolean masks (1.0 when both are empty)."""
    total = int(prediction.sum()) + int(target.sum())
    return 1.0 if total == 0 else 2.0 * int((prediction & target).sum()) / total
