"""One feature budget shared by several sessions' embeddings."""

from __future__ import annotations

import torch

from fastsam3d.engine.cache import FeatureCache, nbytes


def test_views_share_one_lru_budget():
    cache = FeatureCache(max_mb=3 * 4 / 2**20 * 1000)  # three 1000-float tensors
    first, second = cache.view(), cache.view()
    first["a"] = torch.zeros(1000)
    first["b"] = torch.zeros(1000)
    second["a"] = torch.zeros(1000)
    assert "a" in first  # used again: the oldest is now first's "b"
    second["b"] = torch.zeros(1000)
    assert "b" not in first and "a" in first and len(second) == 2
    assert cache.total_bytes() == 3 * 4000
    assert second.popitem(last=False)[0] == "a" and len(second) == 1
    first.clear()
    assert len(first) == 0 and cache.total_bytes() == 4000
    big = cache.view()
    big["x"] = torch.zeros(5000)  # alone over the budget: the newest is kept
    assert next(iter(big.values())).numel() == 5000 and len(second) == 0


def test_features_count_the_most_their_kept_maps_may_hold_from_the_start():
    """A ClickUNet ROI's features keep similarity maps after they are stored (their memo): the budget
    counts the memo's bound when they are stored, so it bounds what the memo grows to, and removing
    them gives back exactly what storing them took."""
    from fastsam3d.modeling.click_unet import SIMILARITY_MEMO_MAPS, ClickUNetFeatures

    cache = FeatureCache(max_mb=1)
    view = cache.view()
    unit = torch.zeros(1, 2, 5, 5, 5)  # fine grid 5³: each kept map is 125 floats
    features = ClickUNetFeatures([torch.zeros(10), torch.zeros(20)], unit, torch.zeros(40), {})
    stored = (10 + 20 + unit.numel() + 40 + SIMILARITY_MEMO_MAPS * 125) * 4
    view["roi"] = features
    assert cache.total_bytes() == stored
    features.memo[(0, frozenset({1}))] = torch.zeros(5, 5, 5)  # a map kept by a decode
    assert cache.total_bytes() == stored
    view.clear()
    assert cache.total_bytes() == 0
    assert nbytes(features._replace(memo=None)) == stored - SIMILARITY_MEMO_MAPS * 125 * 4  # a batch keeps none
