"""TinyViT image encoder as configured in LiteMedSAM (256x256 input -> 256 x 64 x 64 embedding).

Stage 0 is MobileNet-style inverted residual convolutions, stages 1-3 are windowed attention
blocks with a learned bias per (|dy|, |dx|) offset and a depthwise conv between attention and
MLP. Keys follow LiteMedSAM's ``tiny_vit_sam.py`` (``Conv2d_BN`` = ``.c`` conv + ``.bn``). In
LiteMedSAM the patch embedding is two 1x1 convolutions (stride 1), patch merging halves the grid
except into the 320-wide stage, so 256 -> 256 -> 128 -> 64 -> 64 tokens per side.
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from torch import nn

from .common import LayerNorm2d


class ConvBN(nn.Sequential):
    """Bias-free conv followed by BatchNorm (keys ``c`` and ``bn``)."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int = 1, stride: int = 1, groups: int = 1) -> None:
        super().__init__()
        self.add_module(
            "c", nn.Conv2d(in_channels, out_channels, kernel, stride, kernel // 2, groups=groups, bias=False)
        )
        self.add_module("bn", nn.BatchNorm2d(out_channels))

    @torch.no_grad()
    def fused(self) -> nn.Conv2d:
        """The same map as one conv with bias (BatchNorm folded in; inference only)."""
        conv, bn = self.c, self.bn
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        fused = nn.Conv2d(
            conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, groups=conv.groups
        )
        fused.weight.copy_(conv.weight * scale[:, None, None, None])
        fused.bias.copy_(bn.bias - bn.running_mean * scale)
        return fused.to(conv.weight.device)


def fuse_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every :class:`ConvBN` below ``module`` by its fused conv, in place (after loading
    weights; the fused model has other state-dict keys), and store the weights channels-last: the
    256² MobileNet stage then runs in oneDNN's native layout, and the blocks' token views need no
    copies (same output to ~3e-6)."""
    _fuse(module)
    return module.to(memory_format=torch.channels_last)


def _fuse(module: nn.Module) -> None:
    for name, child in module.named_children():
        if isinstance(child, ConvBN):
            setattr(module, name, child.fused())
        else:
            _fuse(child)


class MBConv(nn.Module):
    """Inverted residual: 1x1 expand, depthwise 3x3, 1x1 project, residual, GELU after each."""

    def __init__(self, channels: int, expand_ratio: float) -> None:
        super().__init__()
        hidden = int(channels * expand_ratio)
        self.conv1 = ConvBN(channels, hidden)
        self.conv2 = ConvBN(hidden, hidden, 3, groups=hidden)
        self.conv3 = ConvBN(hidden, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.gelu(self.conv2(F.gelu(self.conv1(x))))
        return F.gelu(self.conv3(y) + x)


class PatchMerging(nn.Module):
    """1x1 conv, depthwise 3x3 with ``stride``, 1x1 conv (GELU between): (B, C, H, W) -> (B, C', H/s, W/s)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = ConvBN(in_channels, out_channels)
        self.conv2 = ConvBN(out_channels, out_channels, 3, stride, groups=out_channels)
        self.conv3 = ConvBN(out_channels, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv3(F.gelu(self.conv2(F.gelu(self.conv1(x)))))


class WindowAttention(nn.Module):
    """Attention inside a ``window`` x ``window`` window with a learned bias per axis offset."""

    def __init__(self, dim: int, num_heads: int, window: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        points = list(itertools.product(range(window), range(window)))
        offsets: dict[tuple[int, int], int] = {}
        index = [offsets.setdefault((abs(a[0] - b[0]), abs(a[1] - b[1])), len(offsets)) for a in points for b in points]
        self.attention_biases = nn.Parameter(torch.zeros(num_heads, len(offsets)))
        self.register_buffer(
            "attention_bias_idxs", torch.tensor(index).view(len(points), len(points)), persistent=False
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, dim = x.shape
        q, k, v = self.qkv(self.norm(x)).view(batch, tokens, self.num_heads, 3, -1).permute(3, 0, 2, 1, 4)
        # a 4D mask: PyTorch's CPU flash kernel takes it (a 3D one falls back to the math path, ~3x slower)
        bias = self.attention_biases[:, self.attention_bias_idxs].to(q.dtype)[None]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        return self.proj(out.transpose(1, 2).reshape(batch, tokens, dim))


class TokenMLP(nn.Module):
    """LayerNorm, then fc1 -> GELU -> fc2 (the norm is inside the MLP in TinyViT)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(self.norm(x))))


class TinyViTBlock(nn.Module):
    """Windowed attention (zero-padded to whole windows) + residual, depthwise 3x3 conv, MLP + residual."""

    def __init__(self, dim: int, num_heads: int, window: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.window = window
        self.attn = WindowAttention(dim, num_heads, window)
        self.local_conv = ConvBN(dim, dim, 3, groups=dim)
        self.mlp = TokenMLP(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = x.shape
        w = self.window
        pad_h, pad_w = (-height) % w, (-width) % w
        tokens = F.pad(x.permute(0, 2, 3, 1), (0, 0, 0, pad_w, 0, pad_h))
        rows, cols = (height + pad_h) // w, (width + pad_w) // w
        windows = tokens.view(batch, rows, w, cols, w, channels).transpose(2, 3).reshape(-1, w * w, channels)
        attended = self.attn(windows).view(batch, rows, cols, w, w, channels).transpose(2, 3)
        attended = attended.reshape(batch, rows * w, cols * w, channels)[:, :height, :width]
        x = x + attended.permute(0, 3, 1, 2)
        x = self.local_conv(x)
        tokens = x.flatten(2).transpose(1, 2)
        tokens = tokens + self.mlp(tokens)
        return tokens.transpose(1, 2).reshape(batch, channels, height, width)


class Stage(nn.Module):
    """A list of blocks and an optional patch merging (key names ``blocks`` and ``downsample``)."""

    def __init__(self, blocks: list[nn.Module], downsample: nn.Module | None) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return x if self.downsample is None else self.downsample(x)


class TinyViT(nn.Module):
    """TinyViT-5M as in LiteMedSAM: (B, 3, 256, 256) in [0, 1] -> (B, 256, 64, 64)."""

    def __init__(
        self,
        img_size: int = 256,
        embed_dims: tuple[int, ...] = (64, 128, 160, 320),
        depths: tuple[int, ...] = (2, 2, 6, 2),
        num_heads: tuple[int, ...] = (2, 4, 5, 10),
        window_sizes: tuple[int, ...] = (7, 7, 14, 7),
        out_chans: int = 256,
    ) -> None:
        super().__init__()
        self.img_size = img_size
        self.patch_embed = nn.Module()
        self.patch_embed.seq = nn.Sequential(
            ConvBN(3, embed_dims[0] // 2), nn.GELU(), ConvBN(embed_dims[0] // 2, embed_dims[0])
        )
        stages = []
        for index, dim in enumerate(embed_dims):
            if index == 0:
                blocks = [MBConv(dim, 4.0) for _ in range(depths[0])]
            else:
                blocks = [TinyViTBlock(dim, num_heads[index], window_sizes[index]) for _ in range(depths[index])]
            downsample = None
            if index < len(embed_dims) - 1:
                out = embed_dims[index + 1]
                downsample = PatchMerging(dim, out, stride=1 if out in (320, 448, 576) else 2)
            stages.append(Stage(blocks, downsample))
        self.layers = nn.ModuleList(stages)
        self.neck = nn.Sequential(
            nn.Conv2d(embed_dims[-1], out_chans, 1, bias=False),
            LayerNorm2d(out_chans),
            nn.Conv2d(out_chans, out_chans, 3, padding=1, bias=False),
            LayerNorm2d(out_chans),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.neck[2].weight.is_contiguous(memory_format=torch.channels_last):
            x = x.contiguous(memory_format=torch.channels_last)  # see fuse_batchnorm
        x = self.patch_embed.seq(x)
        for layer in self.layers:
            x = layer(x)
        return self.neck(x)
