"""Simulated clicks and Dice (fastsam3d.clicks)."""

import numpy as np

from fastsam3d.clicks import center_click, dice

from .helpers import hand_made_errors


def test_center_click_goes_to_the_deepest_error():
    prediction, target = hand_made_errors()
    index, positive = center_click(prediction, target)
    assert positive and target[tuple(index)] and not prediction[tuple(index)]
    assert 5 <= index[0] <= 8 and 5 <= index[1] <= 8 and 7 <= index[2] <= 9
    prediction[:] = target
    prediction[0:6, 0:6, 14:20] = True  # only a false positive is left
    index, positive = center_click(prediction, target)
    assert not positive and prediction[tuple(index)] and not target[tuple(index)]
    assert center_click(target, target) is None


def test_dice():
    a = np.zeros((4, 4, 4), bool)
    b = a.copy()
    a[:2] = True
    b[1:3] = True
    assert dice(a, b) == 0.5 and dice(a, a) == 1.0 and dice(a & False, b & False) == 1.0
