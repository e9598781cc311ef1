"""Segmentation metrics (MONAI), computed on the box around both masks.

Surface metrics only see voxels near the masks, so they are evaluated on the bounding box of
``prediction | target`` grown by one voxel (clipped to the volume): the same value as on the
whole volume, at a fraction of the cost for a small structure in a large CT. With ``surfels``
the surface Dice weights each boundary element by its surface area (MONAI's
``use_subvoxels``), which equals the DeepMind ``surface-distance`` code (``SurfaceDice.py``)
that the CVPR 2024 and 2025 challenges score with.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

DEFAULT_NSD_TOLERANCE_MM = 2.0
CHALLENGE_NSD_TOLERANCE_MM = 2.0  # CVPR25_iter_eval.py: compute_multi_class_nsd(..., tolerance=2.0)
CHALLENGE_NSD_MIN_DICE = 0.2  # CVPR25_iter_eval.py: NSD only when the case's Dice > 0.2, else 0
CHALLENGE_CLICKS = 5  # CVPR25_iter_eval.py: n_clicks = 5 (after the box step)
CHALLENGE_SECONDS_PER_CLASS = 90.0  # the challenge README: 90 s per class for the whole case


def segmentation_metrics(
    prediction: np.ndarray,
    target: np.ndarray,
    spacing,
    nsd_tolerance: float = DEFAULT_NSD_TOLERANCE_MM,
    hd95: bool = False,
    surfels: bool = False,
) -> dict[str, float]:
    """Dice, normalised surface Dice at ``nsd_tolerance`` mm and (optionally) HD95 in mm.

    Dice and NSD are NaN when both masks are empty; NSD is 0 and HD95 NaN for an empty prediction
    of a non-empty target.
    """
    from monai.metrics import compute_dice, compute_hausdorff_distance, compute_surface_dice

    prediction = np.asarray(prediction, dtype=bool)
    target = np.asarray(target, dtype=bool)
    if prediction.shape != target.shape:
        raise ValueError(f"prediction {prediction.shape} and target {target.shape} differ in shape")
    union = prediction | target
    if not union.any():
        result = {"dice": float("nan"), "nsd": float("nan")}
        return result | ({"hd95": float("nan")} if hd95 else {})
    where = np.argwhere(union)
    low = np.maximum(where.min(0) - 1, 0)
    high = np.minimum(where.max(0) + 2, prediction.shape)
    box = tuple(slice(int(a), int(b)) for a, b in zip(low, high, strict=True))
    pred = torch.from_numpy(prediction[box])[None, None].float()
    true = torch.from_numpy(target[box])[None, None].float()
    spacing = [float(s) for s in spacing]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # MONAI warns about empty masks and deprecated arguments
        result = {
            "dice": float(compute_dice(pred, true, include_background=True)[0, 0]),
            "nsd": float(
                compute_surface_dice(
                    pred, true, [nsd_tolerance], include_background=True, spacing=spacing, use_subvoxels=surfels
                )[0, 0]
            ),
        }
        if hd95:
            distance = compute_hausdorff_distance(pred, true, include_background=True, percentile=95, spacing=spacing)
            result["hd95"] = float(distance[0, 0])
    return result


def area_under_curve(values: list[float]) -> float:
    """Normalised area under a per-click curve (trapezoids over clicks 1..n, divided by n-1;
    the single value for one click)."""
    values = [v for v in values if np.isfinite(v)]
    if not values:
        return float("nan")
    if len(values) == 1:
        return float(values[0])
    return float(np.trapezoid(values) / (len(values) - 1))


def challenge_auc(values: list[float], clicks: int = CHALLENGE_CLICKS) -> float:
    """DSC_AUC / NSD_AUC of the CVPR 2025 challenge: the trapezoidal area under the last
    ``clicks`` values (the click steps; the box step is left out) at x = 0, 1, ..., ``clicks`` - 1,
    so at most ``clicks`` - 1 (4 for the challenge's 5 clicks). NaN with fewer than two values."""
    tail = np.asarray(values[-clicks:] if clicks > 0 else [], dtype=float)
    if len(tail) < 2:
        return float("nan")
    return float(np.trapezoid(tail))


def challenge_nsd(dice: float, nsd: float, min_dice: float = CHALLENGE_NSD_MIN_DICE) -> float:
    """The challenge's NSD of a case: computed only when its Dice exceeds ``min_dice``, else 0."""
    return float(nsd) if dice > min_dice else 0.0
