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
