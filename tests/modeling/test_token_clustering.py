"""3D token clustering in the encoder."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from fastsam3d.modeling.token_clustering import TokenClustering
from fastsam3d.registry import build_model


def flops(function) -> int:
    counter = FlopCounterMode(display=False)
    with counter:
        function()
    return counter.get_total_flops()


def test_one_token_per_cluster_is_the_identity():
    torch.manual_seed(0)
    model = build_model("tiny-student").eval()
    crop = torch.randn(1, 1, 64, 64, 64)
    with torch.no_grad():
        reference = model.encode(crop)
        model.image_encoder.enable_token_clustering(0, cell=1)
        torch.testing.assert_close(model.encode(crop), reference, atol=1e-5, rtol=1e-5)


def test_clusters_and_scatter_back_shapes():
    tokens = torch.randn(2, 8, 8, 8, 16)
    clustering = TokenClustering(cell=2, iterations=3)
    centroids, assignment = clustering.cluster(tokens)
    assert centroids.shape == (2, 4, 4, 4, 16) and assignment.shape == (2, 512)
    assert int(assignment.min()) >= 0 and int(assignment.max()) < 64
    restored = clustering.restore(tokens, centroids, centroids + 1.0, assignment)
    torch.testing.assert_close(restored, tokens + 1.0)  # every token gets its cluster's update
    # k-means moves a token to the neighbouring cluster it resembles: a bright token joins the bright cell
    grid = torch.zeros(1, 4, 4, 4, 1)
    grid[0, 2:4, 0:2, 0:2] = 10.0
    grid[0, 1, 0, 0] = 10.0  # a bright token inside a dark cell, next to the bright cell
    _, assignment = TokenClustering(cell=2, iterations=2).cluster(grid)
    assert int(assignment[0, (1 * 4 + 0) * 4 + 0]) == (1 * 2 + 0) * 2 + 0


def test_macs_fall_as_the_number_of_clusters_falls():
    model = build_model("tiny-student").eval()
    crop = torch.randn(1, 1, 64, 64, 64)
    counts = []
    with torch.no_grad():
        for cell in (1, 2, 4):
            model.image_encoder.enable_token_clustering(0, cell=cell)
            counts.append(flops(lambda: model.encode(crop)))
    assert counts[0] > counts[1] > counts[2]


def test_windowed_blocks_after_the_clustering_point_are_refused():
    with pytest.raises(ValueError, match="global-attention"):
        build_model("tiny-teacher").image_encoder.enable_token_clustering(0, cell=2)


def test_a_tiny_model_trains_with_clustering():
    torch.manual_seed(0)
    model = build_model("tiny-student")
    model.image_encoder.enable_token_clustering(1, cell=2)
    optimiser = torch.optim.AdamW(model.parameters(), lr=1e-3)
    crop = torch.randn(1, 1, 64, 64, 64)
    target = (torch.nn.functional.avg_pool3d(crop, 2) > 0).float()  # at the low-res logits' 32³
    losses = []
    for _ in range(8):
        embedding = model.encode(crop)
        logits, _ = model.decode(embedding, torch.tensor([[[32.0, 32.0, 32.0]]]), torch.tensor([[1]]))
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, target)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
