"""3D prompt encoder: points (and learned boxes) -> sparse tokens, a low-res mask -> dense embedding."""

from __future__ import annotations

import math

import torch
from torch import nn

from .common import LayerNorm3d


class PositionEmbeddingRandom3D(nn.Module):
    """Random Fourier features of 3D coordinates in [0, 1], concatenated as [sin, cos, sin].

    The repeated sine block and the axis swap of :meth:`dense` reproduce the public
    SAM-Med3D code exactly (REFERENCE.md, facts 4 and §1.2).
    """

    def __init__(self, num_pos_feats: int, scale: float = 1.0) -> None:
        super().__init__()
        self.register_buffer("positional_encoding_gaussian_matrix", scale * torch.randn(3, num_pos_feats))

    def _encode(self, coords: torch.Tensor) -> torch.Tensor:
        projected = 2 * math.pi * ((2 * coords - 1) @ self.positional_encoding_gaussian_matrix)
        return torch.cat([torch.sin(projected), torch.cos(projected), torch.sin(projected)], dim=-1)

    def dense(self, size: tuple[int, int, int]) -> torch.Tensor:
        """(C, D, H, W) encoding of the token-grid cell centres; components 0 and 1 are swapped."""
        device = self.positional_encoding_gaussian_matrix.device
        axes = [(torch.arange(n, device=device, dtype=torch.float32) + 0.5) / n for n in size]
        grid_d, grid_h, grid_w = torch.meshgrid(*axes, indexing="ij")
        return self._encode(torch.stack([grid_h, grid_d, grid_w], dim=-1)).permute(3, 0, 1, 2)

    def points(self, coords: torch.Tensor, image_size: tuple[int, int, int]) -> torch.Tensor:
        """(B, N, 3) coordinates in crop voxels (tensor index order) -> (B, N, C)."""
        scale = torch.tensor(image_size, dtype=torch.float32, device=coords.device)
        return self._encode(coords.float() / scale)


class PromptEncoder3D(nn.Module):
    """Encode clicks and a mask prompt for :class:`~fastsam3d.modeling.mask_decoder.MaskDecoder3D`.

    Point labels: 1 = include, 0 = exclude, -1 = padding. The official weights have two point
    embeddings (negative, positive); ``box_embeddings=True`` adds two box-corner embeddings
    (indices 2, 3) for models trained with boxes.
    """

    def __init__(
        self,
        embed_dim: int,
        image_embedding_size: tuple[int, int, int],
        input_image_size: tuple[int, int, int],
        mask_in_chans: int,
        box_embeddings: bool = False,
    ) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.image_embedding_size = tuple(image_embedding_size)
        self.input_image_size = tuple(input_image_size)
        self.mask_input_size = tuple(4 * s for s in image_embedding_size)
        self.pe_layer = PositionEmbeddingRandom3D(embed_dim // 3)
        self.point_embeddings = nn.ModuleList(nn.Embedding(1, embed_dim) for _ in range(4 if box_embeddings else 2))
        self.not_a_point_embed = nn.Embedding(1, embed_dim)
        self.mask_downscaling = nn.Sequential(
            nn.Conv3d(1, mask_in_chans // 4, kernel_size=2, stride=2),
            LayerNorm3d(mask_in_chans // 4),
            nn.GELU(),
            nn.Conv3d(mask_in_chans // 4, mask_in_chans, kernel_size=2, stride=2),
            LayerNorm3d(mask_in_chans),
            nn.GELU(),
            nn.Conv3d(mask_in_chans, embed_dim, kernel_size=1),
        )
        self.no_mask_embed = nn.Embedding(1, embed_dim)

    @property
    def supports_boxes(self) -> bool:
        return len(self.point_embeddings) == 4

    def get_dense_pe(self) -> torch.Tensor:
        """(1, C, D, H, W) positional encoding of the image embedding grid."""
        return self.pe_layer.dense(self.image_embedding_size).unsqueeze(0)

    def _embed_points(self, coords: torch.Tensor, labels: torch.Tensor, pad: bool) -> torch.Tensor:
        coords = coords.float() + 0.5  # voxel centres
        labels = labels.to(coords.device)
        if pad:
            coords = torch.cat([coords, coords.new_zeros(coords.shape[0], 1, 3)], dim=1)
            labels = torch.cat([labels, -labels.new_ones(labels.shape[0], 1)], dim=1)
        embedding = self.pe_layer.points(coords, self.input_image_size)
        embedding = torch.where((labels == -1)[..., None], self.not_a_point_embed.weight, embedding)
        embedding = embedding + (labels == 0)[..., None] * self.point_embeddings[0].weight
        embedding = embedding + (labels == 1)[..., None] * self.point_embeddings[1].weight
        return embedding

    def _embed_boxes(self, boxes: torch.Tensor) -> torch.Tensor:
        corners = self.pe_layer.points(boxes.float().reshape(-1, 2, 3) + 0.5, self.input_image_size)
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
            points: coords (B, N, 3) in crop voxels, tensor index order, and labels (B, N).
            boxes: (B, 6) as (d0, h0, w0, d1, h1, w1) crop voxels; only if ``supports_boxes``.
            masks: (B, 1, 4D, 4H, 4W) low-res logits from a previous prediction.
        Returns:
            sparse (B, T, C) tokens and dense (B, C, D, H, W) embedding.
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
            dense = self.no_mask_embed.weight.reshape(1, -1, 1, 1, 1).expand(batch, -1, *self.image_embedding_size)
        return sparse, dense
