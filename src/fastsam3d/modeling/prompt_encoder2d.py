"""SAM's 2D prompt encoder: points and boxes -> sparse tokens, a low-res mask -> dense embedding.

Coordinates are (x, y) = (column, row) pixels of the model's input image, as in
``segment_anything``; random Fourier features are [sin, cos].
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .common import LayerNorm2d


class PositionEmbeddingRandom(nn.Module):
    """Random Fourier features of (x, y) in [0, 1]."""

    def __init__(self, num_pos_feats: int) -> None:
        super().__init__()
        self.register_buffer("positional_encoding_gaussian_matrix", torch.randn(2, num_pos_feats))

    def encode(self, coords: torch.Tensor) -> torch.Tensor:
        projected = 2 * math.pi * ((2 * coords - 1) @ self.positional_encoding_gaussian_matrix)
        return torch.cat([torch.sin(projected), torch.cos(projected)], dim=-1)

    def dense(self, size: tuple[int, int]) -> torch.Tensor:
        """(C, H, W) encoding of the embedding grid's cell centres."""
        device = self.positional_encoding_gaussian_matrix.device
        rows = (torch.arange(size[0], device=device, dtype=torch.float32) + 0.5) / size[0]
        cols = (torch.arange(size[1], device=device, dtype=torch.float32) + 0.5) / size[1]
        grid_y, grid_x = torch.meshgrid(rows, cols, indexing="ij")
        return self.encode(torch.stack([grid_x, grid_y], dim=-1)).permute(2, 0, 1)


class PromptEncoder2D(nn.Module):
    """Point labels: 1 include, 0 exclude, -1 padding; boxes (B, 4) as x0, y0, x1, y1."""

    supports_boxes = True

    def __init__(self, embed_dim: int, image_embedding_size: tuple[int, int], input_image_size: tuple[int, int], mask_in_chans: int = 16) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.image_embedding_size = tuple(image_embedding_size)
        self.input_image_size = tuple(input_image_size)
        self.mask_input_size = tuple(4 * s for s in image_embedding_size)
        self.pe_layer = PositionEmbeddingRandom(embed_dim // 2)
        self.point_embeddings = nn.ModuleList(nn.Embedding(1, embed_dim) for _ in range(4))
        self.not_a_point_embed = nn.Embedding(1, embed_dim)
        self.mask_downscaling = nn.Sequential(
            nn.Conv2d(1, mask_in_chans // 4, kernel_size=2, stride=2),
            LayerNorm2d(mask_in_chans // 4),
            nn.GELU(),
            nn.Conv2d(mask_in_chans // 4, mask_in_chans, kernel_size=2, stride=2),
            LayerNorm2d(mask_in_chans),
            nn.GELU(),
            nn.Conv2d(mask_in_chans, embed_dim, kernel_size=1),
        )
        self.no_mask_embed = nn.Embedding(1, embed_dim)

    def get_dense_pe(self) -> torch.Tensor:
        return self.pe_layer.dense(self.image_embedding_size).unsqueeze(0)

    def _normalise(self, coords: torch.Tensor) -> torch.Tensor:
        height, width = self.input_image_size
        return (coords.float() + 0.5) / torch.tensor([width, height], dtype=torch.float32, device=coords.device)

    def forward(self, points, boxes, masks) -> tuple[torch.Tensor, torch.Tensor]:
        batch = next((t.shape[0] for t in (points[0] if points else None, boxes, masks) if t is not None), 1)
        device = self.no_mask_embed.weight.device
        sparse = torch.empty(batch, 0, self.embed_dim, device=device)
        if points is not None:
            coords, labels = points
            labels = labels.to(device)
            if boxes is None:
                coords = torch.cat([coords, coords.new_zeros(batch, 1, 2)], dim=1)
                labels = torch.cat([labels, -labels.new_ones(batch, 1)], dim=1)
            embedding = self.pe_layer.encode(self._normalise(coords))
            embedding = torch.where((labels == -1)[..., None], self.not_a_point_embed.weight, embedding)
            embedding = embedding + (labels == 0)[..., None] * self.point_embeddings[0].weight
            embedding = embedding + (labels == 1)[..., None] * self.point_embeddings[1].weight
            sparse = torch.cat([sparse, embedding], dim=1)
        if boxes is not None:
            corners = self.pe_layer.encode(self._normalise(boxes.reshape(-1, 2, 2)))
            corners[:, 0] += self.point_embeddings[2].weight[0]
            corners[:, 1] += self.point_embeddings[3].weight[0]
            sparse = torch.cat([sparse, corners], dim=1)
        if masks is not None:
            dense = self.mask_downscaling(masks)
        else:
            dense = self.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(batch, -1, *self.image_embedding_size)
        return sparse, dense
