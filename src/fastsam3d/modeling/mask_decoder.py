"""Mask decoder: tokens + image embedding -> low-res mask logits (4x the token grid) and IoU scores.

The same module serves 3D (SAM-Med3D) and 2D (SAM, MedSAM, LiteMedSAM) models: ``spatial_dims``
picks the upscaling layers; state-dict keys are those of the respective official code."""

from __future__ import annotations

import functools
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from .common import MLP, LayerNorm3d, PatchExpand3d, gelu_of_fresh
from .transformer import TwoWayTransformer


class MaskDecoder(nn.Module):
    """The 2D and 3D SAMs' mask decoder; the two-way transformer's shape is fixed as in the reference."""

    def __init__(
        self,
        transformer_dim: int,
        num_multimask_outputs: int = 3,
        iou_head_depth: int = 3,
        iou_head_hidden_dim: int = 256,
        transformer_depth: int = 2,
        transformer_heads: int = 8,
        transformer_mlp_dim: int = 2048,
        spatial_dims: int = 3,
    ) -> None:
        super().__init__()
        self.num_mask_tokens = num_multimask_outputs + 1
        self.transformer = TwoWayTransformer(transformer_depth, transformer_dim, transformer_heads, transformer_mlp_dim)
        self.iou_token = nn.Embedding(1, transformer_dim)
        self.mask_tokens = nn.Embedding(self.num_mask_tokens, transformer_dim)
        expand = PatchExpand3d if spatial_dims == 3 else partial(nn.ConvTranspose2d, kernel_size=2, stride=2)
        self.output_upscaling = nn.Sequential(
            expand(transformer_dim, transformer_dim // 4),
            LayerNorm3d(transformer_dim // 4),
            nn.GELU(),
            expand(transformer_dim // 4, transformer_dim // 8),
            nn.GELU(),
        )
        self.output_hypernetworks_mlps = nn.ModuleList(
            MLP(transformer_dim, transformer_dim, transformer_dim // 8, 3) for _ in range(self.num_mask_tokens)
        )
        self.iou_prediction_head = MLP(transformer_dim, iou_head_hidden_dim, self.num_mask_tokens, iou_head_depth)

    def forward(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        multimask_output: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Args:
            image_embeddings: (B or 1, C, D, H, W); repeated to the prompt batch when it is 1.
            image_pe: (1, C, D, H, W).
            sparse_prompt_embeddings: (B, T, C); dense_prompt_embeddings: (B, C, D, H, W).
        Returns:
            masks (B, M, 4D, 4H, 4W) logits and iou (B, M); M = 3 with multimask, else 1.
        """
        batch = sparse_prompt_embeddings.shape[0]
        output_tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0)
        tokens = torch.cat([output_tokens.unsqueeze(0).expand(batch, -1, -1), sparse_prompt_embeddings], dim=1)
        src = image_embeddings.expand(batch, *image_embeddings.shape[1:]) + dense_prompt_embeddings
        pos = image_pe.expand(batch, *image_pe.shape[1:])
        grid = src.shape[2:]
        hs, src_tokens = self.transformer(src, pos, tokens)
        selected = slice(1, None) if multimask_output else slice(0, 1)
        hyper_in = torch.stack(  # only the returned masks' hypernetworks
            [self.output_hypernetworks_mlps[i](hs[:, 1 + i]) for i in range(self.num_mask_tokens)[selected]], dim=1
        )
        if isinstance(self.output_upscaling[0], PatchExpand3d):
            masks = self._masks_3d(src_tokens, grid, hyper_in)
        else:
            upscaled = self.output_upscaling(src_tokens.transpose(1, 2).reshape(batch, -1, *grid))
            masks = (hyper_in @ upscaled.flatten(2)).view(batch, -1, *upscaled.shape[2:])
        iou_pred = self.iou_prediction_head(hs[:, 0])
        return masks, iou_pred[:, selected]

    def _masks_3d(self, src_tokens: torch.Tensor, grid: tuple[int, ...], hyper_in: torch.Tensor) -> torch.Tensor:
        """``output_upscaling`` and the hypernetwork product on (B, N, C) tokens, with the voxels
        kept in the expansions' block order (each voxel's 2³ children consecutive) and only the M
        masks put in place at the end: the layer-by-layer numbers without reshuffling the 32³ × C/8
        features twice (a cached click's decoder 53 -> ~40 ms on 2 CPU cores). -> (B, M, 4D, 4H, 4W)."""
        expand, norm, _, expand_again, _ = self.output_upscaling
        x = expand.expand_rows(src_tokens)  # (B, k³N, C/4)
        x = gelu_of_fresh(F.layer_norm(x, x.shape[-1:], norm.weight, norm.bias, norm.eps))
        x = gelu_of_fresh(expand_again.expand_rows(x))  # (B, k⁶N, C/8)
        masks = x @ hyper_in.transpose(1, 2)  # (B, k⁶N, M)
        d, h, w = grid
        k = expand.kernel_size[0]
        in_space = masks.transpose(1, 2).index_select(2, _space_order(d, h, w, k, masks.device))
        return in_space.view(masks.shape[0], masks.shape[2], k * k * d, k * k * h, k * k * w)


@functools.lru_cache(maxsize=8)
def _space_order(d: int, h: int, w: int, k: int, device: torch.device) -> torch.Tensor:
    """The block-ordered rows (voxel, child, grandchild) of a (d, h, w) grid expanded twice by k, in
    space order: depth of a grandchild = k² d + k child_d + grandchild_d (on ``device``, made once).
    A gather of these rows took 0.11 ms where the 11-dimensional permutation took 0.35 (the
    student's 32³ masks)."""
    with torch.inference_mode(False):  # a normal tensor, which a later decode under autograd may save
        rows = torch.arange(d * h * w * k**6).view(d, h, w, *(k,) * 6)
        return rows.permute(0, 3, 6, 1, 4, 7, 2, 5, 8).reshape(-1).to(device)
