"""3D token clustering (Fast 3D SAM's idea, built here): after encoder block k the tokens are grouped
into clusters, the remaining blocks run on the cluster tokens, and the result is scattered back to
full resolution for the dense mask decoder.

Clusters start as the cells of a coarser grid (``cell``³ tokens each, so m = N / cell³ clusters)
and are refined by ``iterations`` k-means steps in which every token may move to the nearest
centroid among its own cell and the 26 neighbouring cells (a local 3D window). Cluster tokens keep
their cell's position, so the following blocks attend on the coarse grid with their own
relative-position tables read at ``cell``-token strides. Scattering back adds each cluster's update
(output minus input) to its member tokens, keeping the fine detail of the tokens before clustering.
With ``cell = 1`` every token is its own cluster and the encoder is unchanged.
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from torch import nn


class TokenClustering(nn.Module):
    """Grouping of a (B, D, H, W, C) token grid into a (B, D/s, H/s, W/s, C) grid of cluster tokens."""

    def __init__(self, cell: int = 2, iterations: int = 2) -> None:
        super().__init__()
        self.cell = cell
        self.iterations = iterations

    def cluster(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Cluster tokens (B, d, h, w, C) and each fine token's cluster index (B, N) into d*h*w."""
        batch, d, h, w, channels = x.shape
        s = self.cell
        if d % s or h % s or w % s:
            raise ValueError(f"a {d}x{h}x{w} token grid does not divide into {s}³ cells")
        coarse = (d // s, h // s, w // s)
        centroids = F.avg_pool3d(x.permute(0, 4, 1, 2, 3), s).permute(0, 2, 3, 4, 1)
        tokens = x.reshape(batch, -1, channels)
        grid = torch.stack(torch.meshgrid(*(torch.arange(n, device=x.device) for n in (d, h, w)), indexing="ij"), -1)
        own = (grid // s).reshape(-1, 3)
        offsets = torch.tensor(list(itertools.product((-1, 0, 1), repeat=3)), device=x.device)
        limits = torch.tensor(coarse, device=x.device) - 1
        candidates = (own[:, None, :] + offsets[None]).clamp(min=torch.zeros_like(limits), max=limits)
        candidates = (candidates[..., 0] * coarse[1] + candidates[..., 1]) * coarse[2] + candidates[..., 2]  # (N, 27)
        flat = centroids.reshape(batch, -1, channels)
        assignment = ((own[:, 0] * coarse[1] + own[:, 1]) * coarse[2] + own[:, 2]).expand(batch, -1)
        for _ in range(self.iterations):
            near = flat[:, candidates]  # (B, N, 27, C)
            distance = (near - tokens[:, :, None]).square().sum(-1)
            assignment = torch.gather(candidates.expand(batch, -1, -1), 2, distance.argmin(-1, keepdim=True))[..., 0]
            sums = (
                torch.zeros_like(flat).index_add_(1, assignment[0], tokens[:1])
                if batch == 1
                else torch.stack(
                    [torch.zeros_like(flat[0]).index_add_(0, assignment[b], tokens[b]) for b in range(batch)]
                )
            )
            counts = torch.zeros(batch, flat.shape[1], 1, device=x.device, dtype=x.dtype)
            counts.scatter_add_(1, assignment[..., None], torch.ones_like(tokens[..., :1]))
            flat = torch.where(counts > 0, sums / counts.clamp(min=1), flat)  # an empty cluster keeps its centroid
        return flat.reshape(batch, *coarse, channels), assignment

    @staticmethod
    def restore(
        fine: torch.Tensor, before: torch.Tensor, after: torch.Tensor, assignment: torch.Tensor
    ) -> torch.Tensor:
        """Fine tokens plus their cluster's update: (B, D, H, W, C)."""
        batch, channels = fine.shape[0], fine.shape[-1]
        update = (after - before).reshape(batch, -1, channels)
        gathered = torch.gather(update, 1, assignment[..., None].expand(-1, -1, channels))
        return fine + gathered.reshape(fine.shape)
