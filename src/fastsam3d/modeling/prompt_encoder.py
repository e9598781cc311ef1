"""Prompt encoder of the 2D and 3D SAMs: points (and boxes) -> sparse tokens, a low-res mask ->
dense embedding. The spatial dimensionality follows ``image_embedding_size`` (2 or 3 axes);
state-dict keys are those of ``segment_anything`` and SAM-Med3D alike.

Point frames differ between the two families, as in their public code:

* 3D: (B, N, 3) crop voxels in tensor index order (d, h, w); the dense grid encoding swaps its
  first two components and the Fourier features are [sin, cos, sin] (docs/reference.md fact 4, §6).
* 2D: (B, N, 2) as (x, y) = (column, row) input pixels; features are [sin, cos].
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .common import LayerNorm3d


class PositionEmbeddingRandom(nn.Module):
    """Random Fourier features of coordinates in [0, 1] (2 or 3 of them)."""

    def __init__(self, spatial_dims: int, num_pos_feats: int, scale: float = 1.0) -> None:
        super().__init__()
        self.spatial_dims = spatial_dims
        self.register_buffer("positional_encoding_gaussian_matrix", scale * torch.randn(spatial_dims, num_pos_feats))

    def encode(self, coords: torch.Tensor) -> torch.Tensor:
        """(..., spatial_dims) coordinates in [0, 1] -> (..., C)."""
        projected = 2 * math.pi * ((2 * coords - 1) @ self.positional_encoding_gaussian_matrix)
        features = [torch.sin(projected), torch.cos(projected)]
        if self.spatial_dims == 3:
            features.append(torch.sin(projected))  # the reference's repeated sine block
        return torch.cat(features, dim=-1)

    def dense(self, size: tuple[int, ...]) -> torch.Tensor:
        """(C, *size) encoding of the grid's cell centres, with its first two components swapped:
        (x, y) of a (row, column) grid in 2D, the reference's (h, d, w) in 3D."""
        device = self.positional_encoding_gaussian_matrix.device
        axes = [(torch.arange(n, device=device, dtype=torch.float32) + 0.5) / n for n in size]
        grid = list(torch.meshgrid(*axes, indexing="ij"))
        grid[0], grid[1] = grid[1], grid[0]
        return self.encode(torch.stack(grid, dim=-1)).movedim(-1, 0)


class PromptEncoder(nn.Module):
    """Encode points, boxes and a mask prompt for :class:`~fastsam3d.modeling.mask_decoder.MaskDecoder`.

    Point labels: 1 = include, 0 = exclude, -1 = padding. Point embeddings 0 and 1 are negative
    and positive; with ``box_embeddings`` two more (2, 3) mark box corners. The official 3D
    weights have none (the session emulates boxes); the 2D SAMs all have them.
    """

    def __init__(
        self,
        embed_dim: int,
        image_embedding_size: tuple[int, ...],
        input_image_size: tuple[int, ...],
        mask_in_chans: int = 16,
        box_embeddings: bool = True,
    ) -> None:
        super().__init__()
        dims = len(image_embedding_size)
        if dims not in (2, 3) or len(input_image_size) != dims:
            raise ValueError(
                f"a 2D or 3D prompt encoder needs matching sizes, got {image_embedding_size}, {input_image_size}"
            )
        self.spatial_dims = dims
        self.embed_dim = embed_dim
        self.image_embedding_size = tuple(image_embedding_size)
        self.input_image_size = tuple(input_image_size)
        self.mask_input_size = tuple(4 * s for s in image_embedding_size)
        # Size of the input along each point coordinate: index order in 3D, (width, height) in 2D.
        self.point_scale = self.input_image_size if dims == 3 else self.input_image_size[::-1]
        self.pe_layer = PositionEmbeddingRandom(dims, embed_dim // (3 if dims == 3 else 2))
        self.point_embeddings = nn.ModuleList(nn.Embedding(1, embed_dim) for _ in range(4 if box_embeddings else 2))
        self.not_a_point_embed = nn.Embedding(1, embed_dim)
        conv = nn.Conv3d if dims == 3 else nn.Conv2d
        self.mask_downscaling = nn.Sequential(
            conv(1, mask_in_chans // 4, kernel_size=2, stride=2),
            LayerNorm3d(mask_in_chans // 4),
            nn.GELU(),
            conv(mask_in_chans // 4, mask_in_chans, kernel_size=2, stride=2),
            LayerNorm3d(mask_in_chans),
            nn.GELU(),
            conv(mask_in_chans, embed_dim, kernel_size=1),
        )
        self.no_mask_embed = nn.Embedding(1, embed_dim)

    @property
    def supports_boxes(self) -> bool:
        return len(self.point_embeddings) == 4

    def get_dense_pe(self) -> torch.Tensor:
        """(1, C, *image_embedding_size) positional encoding of the image embedding grid."""
        return self.pe_layer.dense(self.image_embedding_size).unsqueeze(0)

    def _encode_points(self, coords: torch.Tensor) -> torch.Tensor:
        """Pixel/voxel coordinates (their centres) -> Fourier features."""
        scale = torch.tensor(self.point_scale, dtype=torch.float32, device=coords.device)
        return self.pe_layer.encode((coords.float() + 0.5) / scale)

    def _embed_points(self, coords: torch.Tensor, labels: torch.Tensor, pad: bool) -> torch.Tensor:
        labels = labels.to(coords.device)
        if pad:
            coords = torch.cat([coords, coords.new_zeros(coords.shape[0], 1, self.spatial_dims)], dim=1)
            labels = torch.cat([labels, -labels.new_ones(labels.shape[0], 1)], dim=1)
        embedding = self._encode_points(coords)
        embedding = torch.where((labels == -1)[..., None], self.not_a_point_embed.weight, embedding)
        embedding = embedding + (labels == 0)[..., None] * self.point_embeddings[0].weight
        embedding = embedding + (labels == 1)[..., None] * self.point_embeddings[1].weight
        return embedding

    def _embed_boxes(self, boxes: torch.Tensor) -> torch.Tensor:
        corners = self._encode_points(boxes.reshape(-1, 2, self.spatial_dims))
        corners[:, 0] += self.point_embeddings[2].weight[0]
        corners[:, 1] += self.point_embeddings[3].weight[0]
        return corners

    def forward(
        self,
        points: tuple[torch.Tensor, torch.Tensor] | None,
        boxes: torch.Tensor | None,
        masks: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Args:
            points: coords (B, N, spatial_dims) in the frame of the module docstring, labels (B, N).
            boxes: (B, 2 * spatial_dims) as two opposite corners in the same frame; only if
                ``supports_boxes``.
            masks: (B, 1, *mask_input_size) low-res logits from a previous prediction.
        Returns:
            sparse (B, T, C) tokens and dense (B, C, *image_embedding_size) embedding.
        """
        if boxes is not None and not self.supports_boxes:
            raise ValueError("this prompt encoder has no box embeddings")
        batch = next((t.shape[0] for t in (points[0] if points else None, boxes, masks) if t is not None), 1)
        device = self.no_mask_embed.weight.device
        sparse = torch.empty(batch, 0, self.embed_dim, device=device)
        if points is not None:
            sparse = torch.cat([sparse, self._embed_points(points[0], points[1], pad=boxes is None)], dim=1)
        if boxes is not None:
            sparse = torch.cat([sparse, self._embed_boxes(boxes)], dim=1)
        if masks is not None:
            dense = self.mask_downscaling(masks)
        else:
            no_mask = self.no_mask_embed.weight.reshape(1, -1, *(1,) * self.spatial_dims)
            dense = no_mask.expand(batch, -1, *self.image_embedding_size)
        return sparse, dense
