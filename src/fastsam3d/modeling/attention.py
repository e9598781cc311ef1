"""Multi-head self-attention of the 3D ViT encoder, with the reference relative-position bias.

The public SAM-Med3D / FastSAM3D code adds a "decomposed" 3D relative-position term whose
broadcasting differs from the intended one (docs/reference.md fact 1). Trained weights depend on
the term *as computed*, so :func:`reference_rel_pos_bias` reproduces it exactly: for query
token (qd, qh, qw) and key token (kd, kh, kw) the bias is

    q(qd,qh,qw)·Rd[qd-kw] + q(qd,qh,kd)·Rh[qh-kw] + q(qd,qh,kh)·Rw[kh-kw]

with q the unscaled query of the same head. Attention itself runs through
``torch.nn.functional.scaled_dot_product_attention`` with this term as an additive mask.

Three ways to evaluate a block (``Attention3D.mode``):

* ``"global"``: all tokens of the grid attend to each other (or per window, when windowed).
* the teacher's windowed blocks pad the 8³ grid to one 14³ window whose padded tokens take
  part in attention (fact 3). :meth:`Attention3D._padded_window` evaluates that exactly on the
  real tokens only, folding the padded keys into one "virtual" key per query (docs/reference.md §9);
  ``exact_padding=True`` runs the literal padded form instead, for verification.
* ``"dilated"``: sparse attention among tokens whose grid coordinates agree modulo
  ``dilation`` on each axis (a correct, scattered-back form of FastSAM3D's sparse attention).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def relative_position_rows(table: torch.Tensor, q_size: int, k_size: int) -> torch.Tensor:
    """Gather ``table[q - k + k_size - 1]`` into a (q_size, k_size, C) tensor.

    ``table`` has one row per relative offset; the reference tables always have
    ``2 * max(q_size, k_size) - 1`` rows, and so must ours.
    """
    if table.shape[0] != 2 * max(q_size, k_size) - 1:
        raise ValueError(
            f"relative-position table has {table.shape[0]} rows, expected {2 * max(q_size, k_size) - 1} "
            f"for a {q_size}-token axis"
        )
    q_coords = torch.arange(q_size, device=table.device)[:, None]
    k_coords = torch.arange(k_size, device=table.device)[None, :]
    return table[q_coords - k_coords + (k_size - 1)]


def reference_rel_pos_bias(
    q: torch.Tensor, rel_d: torch.Tensor, rel_h: torch.Tensor, rel_w: torch.Tensor
) -> torch.Tensor:
    """The reference relative-position bias for a cubic grid.

    Args:
        q: (B, S, S, S, C) unscaled queries on the token grid.
        rel_d, rel_h, rel_w: (2S-1, C) tables.
    Returns:
        (B, S³, S³) additive bias, keys in (D, H, W) row-major order.
    """
    batch, size = q.shape[0], q.shape[1]
    table_d = relative_position_rows(rel_d, size, size)
    table_h = relative_position_rows(rel_h, size, size)
    table_w = relative_position_rows(rel_w, size, size)
    # Contiguous terms (einsum may return them permuted), so that their broadcast sum is laid out in
    # the bias's order and the reshape below is a view: a permuted sum cost a 6 MB copy per block.
    term_d = torch.einsum("bdhwc,dkc->bdhwk", q, table_d).contiguous()
    term_h = torch.einsum("bdhwc,hkc->bdhwk", q, table_h).contiguous()
    term_w = torch.einsum("bdhwc,wkc->bdhwk", q, table_w).contiguous()
    # The reference's broadcasting: each term's last axis lands on the key-w axis, and
    # term_h / term_w take their query-w axis from key-d / key-h respectively.
    bias = term_d[:, :, :, :, None, None] + term_h[:, :, :, None, :, None] + term_w[:, :, :, None, None, :]
    return bias.reshape(batch, size**3, size**3)


def window_partition(x: torch.Tensor, window: int) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """Zero-pad (B, D, H, W, C) at the high end to multiples of ``window`` and split into windows."""
    batch, d, h, w, channels = x.shape
    pad_d, pad_h, pad_w = ((window - s % window) % window for s in (d, h, w))
    x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h, 0, pad_d))
    dp, hp, wp = d + pad_d, h + pad_h, w + pad_w
    x = x.view(batch, dp // window, window, hp // window, window, wp // window, window, channels)
    windows = x.permute(0, 1, 3, 5, 2, 4, 6, 7).reshape(-1, window, window, window, channels)
    return windows, (dp, hp, wp)


def window_unpartition(
    windows: torch.Tensor, window: int, padded: tuple[int, int, int], size: tuple[int, int, int]
) -> torch.Tensor:
    """Inverse of :func:`window_partition`, cropping the padding away."""
    dp, hp, wp = padded
    nd, nh, nw = dp // window, hp // window, wp // window
    batch = windows.shape[0] // (nd * nh * nw)
    x = windows.view(batch, nd, nh, nw, window, window, window, -1)
    x = x.permute(0, 1, 4, 2, 5, 3, 6, 7).reshape(batch, dp, hp, wp, -1)
    return x[:, : size[0], : size[1], : size[2]].contiguous()


class Attention3D(nn.Module):
    """Multi-head attention over a (B, D, H, W, C) token grid (keys ``qkv``, ``proj``, ``rel_pos_*``)."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        qkv_bias: bool = True,
        use_rel_pos: bool = True,
        rel_pos_size: int = 8,
        window_size: int = 0,
        mode: str = "global",
        dilation: int = 2,
    ) -> None:
        super().__init__()
        if mode not in ("global", "dilated"):
            raise ValueError(f"unknown attention mode {mode!r}; use 'global' or 'dilated'")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.use_rel_pos = use_rel_pos
        self.rel_pos_stride = 1  # > 1 when the block runs on cluster tokens (token_clustering.py)
        self.window_size = window_size
        self.mode = mode
        self.dilation = dilation
        self.exact_padding = False
        if use_rel_pos:
            length = 2 * rel_pos_size - 1
            self.rel_pos_d = nn.Parameter(torch.zeros(length, self.head_dim))
            self.rel_pos_h = nn.Parameter(torch.zeros(length, self.head_dim))
            self.rel_pos_w = nn.Parameter(torch.zeros(length, self.head_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, D, H, W, C) normalised tokens -> (B, D, H, W, C) attention output (after ``proj``)."""
        size = x.shape[1:4]
        window = self.window_size
        if window > 0 and max(size) < window and not self.exact_padding and self.qkv.bias is not None:
            return self.proj(self._padded_window(x))
        if window > 0:
            windows, padded = window_partition(x, window)
            return self.proj(window_unpartition(self._attend(windows), window, padded, size))
        return self.proj(self._attend(x))

    def _split_heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, D, H, W, C) -> q, k, v each (B, heads, N, head_dim)."""
        batch = x.shape[0]
        qkv = self.qkv(x).reshape(batch, -1, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        return qkv.unbind(0)

    def _merge_heads(self, out: torch.Tensor, grid: tuple[int, ...]) -> torch.Tensor:
        """(B, heads, N, head_dim) -> (B, D, H, W, C), channels head-major."""
        return out.transpose(1, 2).reshape(out.shape[0], *grid, -1)

    def _bias(self, q: torch.Tensor, grid: tuple[int, ...]) -> torch.Tensor | None:
        if not self.use_rel_pos:
            return None
        batch = q.shape[0]
        q_grid = q.reshape(batch * self.num_heads, *grid, self.head_dim)
        tables = [self._strided(t, grid[0]) for t in (self.rel_pos_d, self.rel_pos_h, self.rel_pos_w)]
        bias = reference_rel_pos_bias(q_grid, *tables)
        return bias.view(batch, self.num_heads, *bias.shape[1:])

    def _strided(self, table: torch.Tensor, size: int) -> torch.Tensor:
        """The table's rows for a ``size``-token axis whose tokens are ``rel_pos_stride`` fine tokens
        apart (token clustering); the table itself at stride 1."""
        if self.rel_pos_stride == 1:
            return table
        centre = (table.shape[0] - 1) // 2
        offsets = torch.arange(-(size - 1), size, device=table.device) * self.rel_pos_stride
        return table[centre + offsets]

    def _attend(self, x: torch.Tensor) -> torch.Tensor:
        grid = tuple(x.shape[1:4])
        q, k, v = self._split_heads(x)
        bias = self._bias(q, grid)
        if self.mode == "dilated":
            out = self._dilated(q, k, v, bias, grid)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=self.scale)
        return self._merge_heads(out, grid)

    def _dilated(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None, grid: tuple[int, ...]
    ) -> torch.Tensor:
        """Attention within the r³ interleaved sub-grids (coordinates equal modulo r), scattered back."""
        r = self.dilation
        if any(s % r for s in grid):
            raise ValueError(f"dilated attention needs a grid divisible by {r}, got {grid}")
        index = torch.arange(q.shape[2], device=q.device).view(grid[0] // r, r, grid[1] // r, r, grid[2] // r, r)
        order = index.permute(1, 3, 5, 0, 2, 4).reshape(r**3, -1)  # group, member
        groups, members = order.shape

        def gather(t: torch.Tensor) -> torch.Tensor:
            return t[:, :, order.reshape(-1)].view(t.shape[0], t.shape[1], groups, members, t.shape[-1])

        group_bias = None
        if bias is not None:
            rows = order[:, :, None].expand(groups, members, members)
            cols = order[:, None, :].expand(groups, members, members)
            group_bias = bias[:, :, rows, cols]
        out = F.scaled_dot_product_attention(gather(q), gather(k), gather(v), attn_mask=group_bias, scale=self.scale)
        scattered = torch.empty_like(q)
        scattered[:, :, order.reshape(-1)] = out.reshape(q.shape)
        return scattered

    def _padded_window(self, x: torch.Tensor) -> torch.Tensor:
        """Exact output of the reference's zero-padded single window, computed on the real tokens.

        Padded tokens are zero after ``norm1``, so their q, k and v are the qkv biases. Their
        total softmax weight for each real query factorises over the key axes (docs/reference.md
        §9) and enters the attention as one extra key (k = k-bias, v = v-bias) whose
        additive bias is the log of that total. Tokens of the real grid attend normally.
        """
        batch, grid, window = x.shape[0], tuple(x.shape[1:4]), self.window_size
        size = grid[0]
        if grid != (size, size, size):
            raise ValueError(f"the padded-window attention needs a cubic token grid, got {grid}")
        heads, head_dim = self.num_heads, self.head_dim
        q, k, v = self._split_heads(x)
        q_bias, k_bias, v_bias = self.qkv.bias.view(3, heads, 1, head_dim).unbind(0)
        k_ext = torch.cat([k, k_bias.expand(batch, heads, 1, head_dim)], dim=2)
        v_ext = torch.cat([v, v_bias.expand(batch, heads, 1, head_dim)], dim=2)
        if not self.use_rel_pos:
            mask = q.new_zeros(batch, heads, size**3, size**3 + 1)
            mask[..., -1] = math.log(window**3 - size**3)  # that many identical padded keys
            out = F.scaled_dot_product_attention(q, k_ext, v_ext, attn_mask=mask, scale=self.scale)
            return self._merge_heads(out, grid)

        q_grid = q.reshape(batch, heads, size, size, size, head_dim)
        # Queries along the w axis, extended by the padded positions (whose q is the q bias).
        q_pad_w = torch.cat(
            [
                q_grid,
                q_bias.view(1, heads, 1, 1, 1, head_dim).expand(batch, heads, size, size, window - size, head_dim),
            ],
            dim=4,
        )
        table_d = relative_position_rows(self.rel_pos_d, window, window)[:size]  # (qd<S, kw<W, C)
        table_h = relative_position_rows(self.rel_pos_h, window, window)[:size]  # (qh<S, kw<W, C)
        table_w = relative_position_rows(self.rel_pos_w, window, window)  # (j<W, kw<W, C)
        term_a = torch.einsum("bndhwc,dkc->bndhwk", q_grid, table_d)  # [qd,qh,qw,kw]
        term_b = torch.einsum("bndhjc,hkc->bndhjk", q_pad_w, table_h)  # [qd,qh,kd=j,kw]
        term_c = torch.einsum("bndhjc,jkc->bndhjk", q_pad_w, table_w)  # [qd,qh,kh=j,kw]

        # The mask: the real keys' bias, then the virtual key's column. Written in place where nothing
        # records gradients: the sum, its reshape and a concatenation each wrote the 12.6 MB mask
        # (under the profiler, ~100 ms of the teacher's int8 encode on 2 AVX2 cores; the one write ~40).
        mask = q.new_empty(batch, heads, size**3, size**3 + 1)
        real_bias = mask[..., : size**3].view(batch, heads, *(size,) * 6)
        partial = term_a[..., None, None, :size] + term_b[:, :, :, :, None, :size, None, :size]
        term_c_keys = term_c[:, :, :, :, None, None, :size, :size]
        if torch.is_grad_enabled() and partial.requires_grad:
            real_bias.copy_(partial + term_c_keys)
        else:
            torch.add(partial, term_c_keys, out=real_bias)

        # log of sum over padded keys = log(sum over the whole window - sum over the real grid).
        log_full = torch.logsumexp(term_b, dim=4) + torch.logsumexp(term_c, dim=4)  # (b,n,qd,qh,kw)
        log_real = torch.logsumexp(term_b[..., :size, :], dim=4) + torch.logsumexp(term_c[..., :size, :], dim=4)
        inner = log_full.clone()
        inner[..., :size] = log_full[..., :size] + torch.log1p(-torch.exp(log_real[..., :size] - log_full[..., :size]))
        log_padded = torch.logsumexp(term_a + inner[:, :, :, :, None, :], dim=-1)  # (b,n,qd,qh,qw)
        mask[..., -1] = log_padded.reshape(batch, heads, size**3)
        out = F.scaled_dot_product_attention(q, k_ext, v_ext, attn_mask=mask, scale=self.scale)
        return self._merge_heads(out, grid)
