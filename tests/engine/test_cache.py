"""One feature budget shared by several sessions' embeddings."""

from __future__ import annotations

import torch

from fastsam3d.engine.cache import FeatureCache


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


def test_features_count_their_tensors_and_not_the_maps_they_keep_later():
    """A ClickUNet ROI's features keep similarity maps after they are stored (their memo): the budget
    counts what was stored, so removing them gives back exactly what storing them took."""
    from fastsam3d.modeling.click_unet import ClickUNetFeatures

    cache = FeatureCache(max_mb=1)
    view = cache.view()
    features = ClickUNetFeatures([torch.zeros(10), torch.zeros(20)], torch.zeros(30), torch.zeros(40), {})
    view["roi"] = features
    assert cache.total_bytes() == 100 * 4
    features.memo[(0, frozenset({1}))] = torch.zeros(1000)  # a map kept by a decode
    assert cache.total_bytes() == 100 * 4
    view.clear()
    assert cache.total_bytes() == 0
