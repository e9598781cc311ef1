"""SAM's 2D ViT image encoder (ViT-B for SAM and MedSAM: 1024x1024 -> 256 x 64 x 64; SAM-Med2D:
256x256 -> 256 x 16 x 16 with an adapter in every block).

Keys as in ``segment_anything``'s ``ImageEncoderViT``: patch embedding, absolute position
embedding, blocks with windowed (14x14, zero-padded) or global attention and decomposed
relative-position terms (``rel_pos_h``/``rel_pos_w``), and the conv neck.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .common import LayerNorm2d, MLPBlock


def _relative_positions(size_q: int, size_k: int, table: torch.Tensor) -> torch.Tensor:
    """(size_q, size_k, C) relative-position embeddings, the table resized when its length differs."""
    length = 2 * max(size_q, size_k) - 1
    if table.shape[0] != length:
        table = F.interpolate(table.T[None], size=length, mode="linear")[0].T
    q = torch.arange(size_q, device=table.device)[:, None] * max(size_k / size_q, 1.0)
    k = torch.arange(size_k, device=table.device)[None, :] * max(size_q / size_k, 1.0)
    return table[(q - k + (size_k - 1) * max(size_q / size_k, 1.0)).long()]


class Attention2D(nn.Module):
    """Multi-head attention over an (H, W) grid with decomposed relative positions, through SDPA."""

    def __init__(self, dim: int, num_heads: int, size: tuple[int, int]) -> None:
        super().__init__()
        self.num_heads = num_heads
        head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.rel_pos_h = nn.Parameter(torch.zeros(2 * size[0] - 1, head_dim))
        self.rel_pos_w = nn.Parameter(torch.zeros(2 * size[1] - 1, head_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, height, width, dim = x.shape
        q, k, v = self.qkv(x).view(batch, height * width, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        grid_q = q.reshape(batch, self.num_heads, height, width, -1)
        rel_h = torch.einsum("bnhwc,hkc->bnhwk", grid_q, _relative_positions(height, height, self.rel_pos_h))
        rel_w = torch.einsum("bnhwc,wkc->bnhwk", grid_q, _relative_positions(width, width, self.rel_pos_w))
        bias = (rel_h[..., :, None] + rel_w[..., None, :]).reshape(
            batch, self.num_heads, height * width, height * width
        )
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        return self.proj(out.transpose(1, 2).reshape(batch, height, width, dim))


class ChannelSpatialAdapter(nn.Module):
    """SAM-Med2D's adapter beside the MLP: channel attention (squeeze-excite), then a stride-2 conv
    and its transposed conv added back, then LayerNorm. Keys ``channel``, ``spatial``, ``norm``."""

    def __init__(self, dim: int, ratio: float = 0.25) -> None:
        super().__init__()
        hidden = int(dim * ratio)
        self.norm = nn.LayerNorm(dim)
        self.channel = nn.Sequential(
            nn.Linear(dim, hidden, bias=False), nn.ReLU(), nn.Linear(hidden, dim, bias=False), nn.Sigmoid()
        )
        self.spatial = nn.Sequential(
            nn.Conv2d(dim, dim, 3, stride=2, padding=1, bias=False),
            nn.ReLU(),
            nn.ConvTranspose2d(dim, dim, 4, stride=2, padding=1, bias=False),
            nn.ReLU(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 3, 1, 2)
        weighted = x * self.channel(x.mean(dim=(2, 3)))[:, :, None, None]
        return self.norm((x + self.spatial(weighted)).permute(0, 2, 3, 1))


class Block2D(nn.Module):
    """Pre-norm transformer block; ``window`` > 0 attends within zero-padded windows; ``adapter``
    adds SAM-Med2D's adapter on the normalised input of the MLP."""

    def __init__(
        self, dim: int, num_heads: int, window: int, grid: int, mlp_ratio: float = 4.0, adapter: bool = False
    ) -> None:
        super().__init__()
        self.window = window
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention2D(dim, num_heads, (window, window) if window else (grid, grid))
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = MLPBlock(dim, int(dim * mlp_ratio))
        self.Adapter = ChannelSpatialAdapter(dim) if adapter else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.norm1(x)
        if self.window:
            batch, height, width, dim = x.shape
            w = self.window
            pad_h, pad_w = (-height) % w, (-width) % w
            x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
            rows, cols = (height + pad_h) // w, (width + pad_w) // w
            x = x.view(batch, rows, w, cols, w, dim).transpose(2, 3).reshape(-1, w, w, dim)
            x = self.attn(x).view(batch, rows, cols, w, w, dim).transpose(2, 3)
            x = x.reshape(batch, rows * w, cols * w, dim)[:, :height, :width]
        else:
            x = self.attn(x)
        x = shortcut + x
        normed = self.norm2(x)
        if self.Adapter is not None:
            return x + self.mlp(normed) + self.Adapter(normed)
        return x + self.mlp(normed)


class ImageEncoderViT2D(nn.Module):
    """(B, 3, S, S) normalised RGB -> (B, out_chans, S/16, S/16)."""

    def __init__(
        self,
        img_size: int = 1024,
        patch_size: int = 16,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        window_size: int = 14,
        global_attn_indexes: tuple[int, ...] = (2, 5, 8, 11),
        out_chans: int = 256,
        adapters: bool = False,
    ) -> None:
        super().__init__()
        self.img_size = img_size
        grid = img_size // patch_size
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(3, embed_dim, patch_size, patch_size)
        self.pos_embed = nn.Parameter(torch.zeros(1, grid, grid, embed_dim))
        self.blocks = nn.ModuleList(
            Block2D(embed_dim, num_heads, 0 if i in global_attn_indexes else window_size, grid, adapter=adapters)
            for i in range(depth)
        )
        self.neck = nn.Sequential(
            nn.Conv2d(embed_dim, out_chans, 1, bias=False),
            LayerNorm2d(out_chans),
            nn.Conv2d(out_chans, out_chans, 3, padding=1, bias=False),
            LayerNorm2d(out_chans),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed.proj(x).permute(0, 2, 3, 1) + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return self.neck(x.permute(0, 3, 1, 2))
