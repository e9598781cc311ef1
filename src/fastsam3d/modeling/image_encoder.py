"""3D ViT image encoder of SAM-Med3D and FastSAM3D (keys ``patch_embed``, ``pos_embed``, ``blocks``, ``neck``)."""

from __future__ import annotations

from functools import partial

import torch
from torch import nn

from .attention import Attention3D
from .common import LayerNorm3d, MLPBlock

BLOCK_STYLES = ("prenorm", "fastsam3d")


class PatchEmbed3D(nn.Module):
    """Non-overlapping 3D patches -> channels-last tokens (B, D', H', W', C)."""

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv3d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).permute(0, 2, 3, 4, 1)


class Block3D(nn.Module):
    """Transformer block on a (B, D, H, W, C) grid; ``with_attention=False`` gives an MLP-only block.

    ``style="prenorm"`` (SAM-Med3D): ``x += attn(norm1(x)); x += mlp(norm2(x))``.
    ``style="fastsam3d"`` (FastSAM3D's block): ``x += attn(norm1(x)); x = norm2(x); x += mlp(x)``,
    i.e. the normalised tensor becomes the residual stream (docs/reference.md fact 2).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        use_rel_pos: bool = True,
        rel_pos_size: int = 8,
        window_size: int = 0,
        with_attention: bool = True,
        style: str = "prenorm",
        attention_mode: str = "global",
        dilation: int = 2,
    ) -> None:
        super().__init__()
        if style not in BLOCK_STYLES:
            raise ValueError(f"unknown block style {style!r}; use one of {BLOCK_STYLES}")
        norm = partial(nn.LayerNorm, eps=1e-6)
        self.style = style
        if with_attention:
            self.norm1 = norm(dim)
            self.attn = Attention3D(
                dim, num_heads, qkv_bias, use_rel_pos, rel_pos_size, window_size, attention_mode, dilation
            )
        self.norm2 = norm(dim)
        self.mlp = MLPBlock(dim, int(dim * mlp_ratio), nn.GELU)

    @property
    def with_attention(self) -> bool:
        return hasattr(self, "attn")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.with_attention:
            x = x + self.attn(self.norm1(x))
        if self.style == "fastsam3d":
            x = self.norm2(x)
            return x + self.mlp(x)
        return x + self.mlp(self.norm2(x))


class ImageEncoderViT3D(nn.Module):
    """(B, 1, S, S, S) normalised crop -> (B, out_chans, S/p, S/p, S/p) image embedding.

    ``skip_layer`` leading blocks are MLP-only (FastSAM3D's student). Blocks not listed in
    ``global_attn_indexes`` use ``window_size`` windows when it is > 0.
    """

    def __init__(
        self,
        img_size: int = 128,
        patch_size: int = 16,
        in_chans: int = 1,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        out_chans: int = 384,
        qkv_bias: bool = True,
        use_abs_pos: bool = True,
        use_rel_pos: bool = True,
        window_size: int = 0,
        global_attn_indexes: tuple[int, ...] = (),
        skip_layer: int = 0,
        block_style: str = "prenorm",
        attention_mode: str = "global",
        dilation: int = 2,
    ) -> None:
        super().__init__()
        self.img_size = img_size
        self.grid_size = img_size // patch_size
        self.patch_embed = PatchEmbed3D(patch_size, in_chans, embed_dim)
        self.pos_embed = (
            nn.Parameter(torch.zeros(1, self.grid_size, self.grid_size, self.grid_size, embed_dim))
            if use_abs_pos
            else None
        )
        self.blocks = nn.ModuleList()
        for index in range(depth):
            window = 0 if index in global_attn_indexes else window_size
            self.blocks.append(
                Block3D(
                    embed_dim,
                    num_heads,
                    mlp_ratio,
                    qkv_bias,
                    use_rel_pos,
                    rel_pos_size=window if window > 0 else self.grid_size,
                    window_size=window,
                    with_attention=index >= skip_layer,
                    style=block_style,
                    attention_mode=attention_mode,
                    dilation=dilation,
                )
            )
        self.neck = nn.Sequential(
            nn.Conv3d(embed_dim, out_chans, kernel_size=1, bias=False),
            LayerNorm3d(out_chans),
            nn.Conv3d(out_chans, out_chans, kernel_size=3, padding=1, bias=False),
            LayerNorm3d(out_chans),
        )
        self.clustering: tuple[int, nn.Module] | None = (
            None  # (after block, TokenClustering), see enable_token_clustering
        )

    def enable_token_clustering(self, after_block: int | None, cell: int = 2, iterations: int = 2) -> None:
        """Cluster tokens after block ``after_block`` (0-based) into cells of ``cell``³ tokens refined
        by k-means (see :mod:`~fastsam3d.modeling.token_clustering`); ``None`` turns it off."""
        from .token_clustering import TokenClustering

        self.clustering = None if after_block is None else (after_block, TokenClustering(cell, iterations))
        for index, block in enumerate(self.blocks):
            if block.with_attention:
                clustered = after_block is not None and index > after_block
                if clustered and block.attn.window_size > 0:
                    raise ValueError("token clustering needs global-attention blocks after the clustering point")
                block.attn.rel_pos_stride = cell if clustered else 1

    def _neck(self, x: torch.Tensor) -> torch.Tensor:
        """``self.neck`` on the (B, C, D, H, W) channels-last view of the tokens. Its 3³ convolution
        reads a contiguous input: on a channels-last one oneDNN copied its 16 MB weight into that
        layout on every call (7.7 ms of a student's 0.23 s encode on 2 AVX2 cores, profiled); the embedding
        goes back to channels-last, the layout the decoders read (an export has no layouts)."""
        reduce, norm, conv, norm_again = self.neck
        embedding = norm_again(conv(norm(reduce(x)).contiguous()))
        if torch.onnx.is_in_onnx_export():
            return embedding
        return embedding.contiguous(memory_format=torch.channels_last_3d)

    def set_exact_padding(self, enabled: bool) -> None:
        """Run padded windows literally (slow) instead of the exact shortcut; for verification."""
        for block in self.blocks:
            if block.with_attention:
                block.attn.exact_padding = enabled

    def forward(
        self, x: torch.Tensor, return_intermediates: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        """Encode; with ``return_intermediates`` also return FastSAM3D's distillation features:
        [patch embedding + pos, output after every 2nd block ..., image embedding]."""
        expected = (self.img_size,) * 3
        if tuple(x.shape[-3:]) != expected:
            raise ValueError(f"image encoder expects a {expected} crop, got {tuple(x.shape[-3:])}")
        x = self.patch_embed(x)
        if self.pos_embed is not None:
            x = x + self.pos_embed
        features = [x]
        clustering = self.clustering
        if clustering is not None and return_intermediates:
            raise ValueError("intermediate features (distillation) need token clustering off")
        for index, block in enumerate(self.blocks):
            x = block(x)
            if (index + 1) % 2 == 0:
                features.append(x)
            if clustering is not None and index == clustering[0]:
                fine = x
                x, assignment = clustering[1].cluster(fine)
                before = x
        if clustering is not None and clustering[0] < len(self.blocks):
            x = clustering[1].restore(fine, before, x, assignment)
        embedding = self._neck(x.permute(0, 4, 1, 2, 3))
        if return_intermediates:
            return embedding, features + [embedding]
        return embedding
