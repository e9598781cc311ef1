"""ClickUNet3D: a convolutional interactive segmenter that keeps the engine's cached-embedding contract.

The heavy part sees the image only and runs once per ROI; the light part takes the prompts:

* ``encode``: a 3D U-Net over the ROI (encoder and image decoder, instance norm) decodes features
  at every scale (:meth:`ClickUNet3D.image_features`) and caches what the prompt part needs of
  them (:class:`ClickUNetFeatures`): each coarser scale's share of its prompt layer (a convolution
  is linear in its input channels), the fine features as unit vectors and their share of the head.
  The input is turned into two intensity channels that do not depend on the scanner's range:
  the crop's histogram-equalised intensities (its empirical CDF: any monotone rescaling, uint8,
  float [0, 1] or Hounsfield units, gives the same channel) and a robust linear rescaling
  (1st → 0, 99th percentile → 1).
* ``decode``: prompt maps (include clicks, exclude clicks, the previous probability, the box)
  plus two *similarity* maps (cosine similarity of every voxel's fine features with the features
  under the include / exclude clicks) enter a small decoder at every scale: 3×3×3 convolutions
  at the two coarsest scales (which structure is meant), 1×1×1 fusions at the finer ones, and a
  full-resolution head, so a click can move the mask by one voxel where it was placed.

Logits come out at the ROI resolution (``low_res_size == (S, S, S)``). With ``honour_clicks``
the logits on the 2×2×2 cells around each click are pushed past ±``CLICK_MARGIN`` (include /
exclude), so the clicked point is inside (outside) the mask whatever the network predicted.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..configs import ClickUNetConfig

CLICK_SIGMA = 1.5  # voxels: width of the Gaussian drawn for each click
CLICK_MARGIN = 2.0  # logit a clicked cell is at least pushed to (include) / below (exclude)
CLICK_RADIUS = 6  # voxels: each click's Gaussian is drawn within this distance (beyond it < 1e-4)
CLICK_MAP_POINTS = 64  # clicks drawn at a time: a lasso's thousands of points at once made 40 MB of temporaries
CELL_CORNERS = torch.tensor([[i, j, k] for i in (0, 1) for j in (0, 1) for k in (0, 1)])  # a 2×2×2 cell's offsets
SIMILARITY_POINTS = 64  # include (exclude) points whose features the similarity maps compare against, at most
SIMILARITY_FILTERS = 24  # clicked vectors up to which the products are a convolution (see _dot_products)
SIMILARITY_VALUES = 2**20  # products computed at a time (slabs of planes): 24 filters over a whole 64³ ROI
# (25 MB of fresh pages) took 12 ms a convolution inside a decode, against 2 ms in slabs
SIMILARITY_MEMO_MAPS = 4  # similarity maps a ROI's features keep for the next click (1 MB each for 64³)
PROMPT_MAPS = 6  # include, exclude, previous probability, box, include / exclude similarity
STEM_CHANNELS = 8  # the 2 intensity channels are zero-padded to 8: oneDNN's fast 3D convolution needs >= 8
CHANNELS_LAST = torch.channels_last_3d
SEPARABLE_UPSAMPLE_VALUES = 2**16  # below this, upsample_2x leaves it to F.interpolate (faster on tiny maps)
CDF_BINS = 256  # piecewise-linear histogram equalisation
FOLDED_NORM_CHANNELS = 16  # below this many channels the instance norm reads voxels in rows of NORM_ROW_WIDTH values
IN_PLACE_NORM_VALUES = 2**19  # and from this many values per sample when it may work in place
NORM_ROW_WIDTH = 64  # a row holds lcm(channels, 64) values
NORM_CHUNK_VALUES = 2**16  # values squared at a time by that path
DEFAULT_CONFIG = ClickUNetConfig()


def _cpu_eager_fp32(x: torch.Tensor) -> bool:
    """Whether ``x`` is an fp32 CPU tensor in eager mode (not under autocast, a trace, an ONNX export)."""
    return (
        x.device.type == "cpu"
        and x.dtype == torch.float32
        and not torch.is_autocast_enabled("cpu")
        and not torch.onnx.is_in_onnx_export()
        and not torch.compiler.is_compiling()
        and not torch.jit.is_tracing()
    )


def conv3d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    stride: tuple[int, ...] = (1, 1, 1),
    padding: tuple[int, ...] = (0, 0, 0),
    dilation: tuple[int, ...] = (1, 1, 1),
    groups: int = 1,
) -> torch.Tensor:
    """``F.conv3d``, on an fp32 CPU tensor in eager mode always through oneDNN's kernel (see :class:`Conv3d`)."""
    if not _cpu_eager_fp32(x) or not torch.backends.mkldnn.is_available():
        return F.conv3d(x, weight, bias, stride, padding, dilation, groups)
    return torch.mkldnn_convolution(x, weight, bias, padding, stride, dilation, groups)


class Conv3d(nn.Conv3d):
    """``nn.Conv3d`` (same parameters) that on the CPU always runs oneDNN's kernel.

    PyTorch sends a 3D convolution whose batch × channels × depth × height is below 20480 (a 2D
    heuristic: 48 channels at 16³, 128 or more at 8³) to its generic kernel, 2-5x slower here
    (48→48 at 16³: 21 ms vs 4 ms on 2 cores); oneDNN is also faster for the 1×1×1 layers at 64³.
    Same results up to float rounding; GPUs, bf16 and exports take the usual path.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.apply_weights(x, self.weight, self.bias)

    def apply_weights(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """This convolution's geometry (padding, stride, ...) with other weights: a slice of its
        input channels, for the part of its output that a part of its input gives."""
        return conv3d(x, weight, bias, self.stride, self.padding, self.dilation, self.groups)


class Pointwise(Conv3d):
    """A 1×1×1 :class:`Conv3d`."""

    def __init__(self, in_channels: int, out_channels: int, bias: bool = True) -> None:
        super().__init__(in_channels, out_channels, 1, bias=bias)


class InstanceNorm3d(nn.InstanceNorm3d):
    """``nn.InstanceNorm3d`` (no running statistics) that on the CPU normalises channels-last memory
    where it lies. PyTorch's instance norm copies channels-last input twice (16 channels at 64³: 42 ms
    vs 3 ms here). Per sample it is a batch norm over the (voxels, channels) matrix, except below
    ``FOLDED_NORM_CHANNELS`` channels, where that kernel is slow (8 at 64³: 6-10 ms), and, with
    ``inplace`` and no gradient to track, for maps of ``IN_PLACE_NORM_VALUES`` or more, whose fresh
    output pages cost more than the arithmetic (16 channels at 64³ in the encoder: 8 → 4 ms). There
    the memory is read as rows of ``lcm(channels, NORM_ROW_WIDTH)`` values (several voxels per row)
    and normalised in two passes, mean then centred sum of squares (8 channels at 64³: 2 ms), in
    place when it may be."""

    def __init__(self, num_features: int, affine: bool = False, inplace: bool = False) -> None:
        super().__init__(num_features, affine=affine)
        self.inplace = inplace

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not _cpu_eager_fp32(x) or x.dim() != 5 or not x.is_contiguous(memory_format=CHANNELS_LAST):
            return super().forward(x)
        batch, channels = x.shape[:2]
        tracked = torch.is_grad_enabled() and any(
            t is not None and t.requires_grad for t in (x, self.weight, self.bias)
        )
        in_place = self.inplace and not tracked
        if channels < FOLDED_NORM_CHANNELS or (in_place and x[0].numel() >= IN_PLACE_NORM_VALUES):
            return self._folded(x, in_place)
        rows = x.permute(0, 2, 3, 4, 1).reshape(batch, -1, channels)  # a view of channels-last memory
        normed = [F.batch_norm(sample, None, None, self.weight, self.bias, True, 0.0, self.eps) for sample in rows]
        out = normed[0][None] if batch == 1 else torch.stack(normed)
        return out.view(batch, *x.shape[2:], channels).permute(0, 4, 1, 2, 3)

    def _folded(self, x: torch.Tensor, in_place: bool) -> torch.Tensor:
        batch, channels = x.shape[:2]
        voxels = x[0, 0].numel()
        width = math.lcm(channels, NORM_ROW_WIDTH)
        if voxels * channels % width:
            width = channels
        folds = width // channels
        rows = x.permute(0, 2, 3, 4, 1).reshape(batch, -1, width)  # a view of channels-last memory
        mean = rows.sum(1).view(batch, folds, channels).sum(1) / voxels
        centred = rows.sub_(mean.repeat(1, folds)[:, None]) if in_place else rows - mean.repeat(1, folds)[:, None]
        chunk = max(1, NORM_CHUNK_VALUES // width)  # squares a chunk at a time: no rows-sized temporary
        squares = sum(part.square().sum(1) for part in centred.split(chunk, 1))
        scale = (squares.view(batch, folds, channels).sum(1) / voxels + self.eps).rsqrt()
        if self.weight is not None:
            scale = scale * self.weight
        shift = torch.zeros_like(scale) if self.bias is None else self.bias.expand(batch, channels)
        scale, shift = scale.repeat(1, folds)[:, None], shift.repeat(1, folds)[:, None]
        out = centred.mul_(scale).add_(shift) if in_place else torch.addcmul(shift, centred, scale)
        return out.view(batch, *x.shape[2:], channels).permute(0, 4, 1, 2, 3)


class ConvNormAct(nn.Sequential):
    """Conv3d (no bias) + InstanceNorm3d (affine) + LeakyReLU."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, kernel: int = 3) -> None:
        conv = (
            Conv3d(in_channels, out_channels, kernel, stride=stride, padding=kernel // 2, bias=False)
            if kernel > 1
            else Pointwise(in_channels, out_channels, bias=False)
        )
        super().__init__(
            conv,
            InstanceNorm3d(out_channels, affine=True, inplace=True),
            nn.LeakyReLU(0.01, inplace=True),
        )


class DoubleConv(nn.Sequential):
    """Two :class:`ConvNormAct` (the first may stride)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__(ConvNormAct(in_channels, out_channels, stride), ConvNormAct(out_channels, out_channels))


def upsample_2x(x: torch.Tensor) -> torch.Tensor:
    """``F.interpolate(x, scale_factor=2, mode="trilinear", align_corners=False)`` of (B, C, D, H, W).

    Without gradients on the CPU, from ``SEPARABLE_UPSAMPLE_VALUES`` values on, it runs axis by axis:
    each output plane is the input plane it lies in mixed 3:1 with the nearest other one (the border
    planes copied), written where it lies in a channels-last output. The 64³ head's 8 channels took
    1.0 ms that way against 3.4 ms; the same values up to float rounding."""
    if x.requires_grad or x.numel() < SEPARABLE_UPSAMPLE_VALUES or not _cpu_eager_fp32(x):
        return F.interpolate(x, scale_factor=2, mode="trilinear", align_corners=False)
    for dim in (4, 3, 2):
        length = x.shape[dim]
        shape = list(x.shape)
        shape[dim] *= 2
        out = torch.empty(shape, dtype=x.dtype, device=x.device, memory_format=CHANNELS_LAST)
        even, odd = out[_every_other(dim, 0)], out[_every_other(dim, 1)]
        torch.lerp(
            x.narrow(dim, 1, length - 1), x.narrow(dim, 0, length - 1), 0.25, out=even.narrow(dim, 1, length - 1)
        )
        torch.lerp(x.narrow(dim, 0, length - 1), x.narrow(dim, 1, length - 1), 0.25, out=odd.narrow(dim, 0, length - 1))
        even.narrow(dim, 0, 1).copy_(x.narrow(dim, 0, 1))
        odd.narrow(dim, length - 1, 1).copy_(x.narrow(dim, length - 1, 1))
        x = out
    return x


def intensity_channels(image: torch.Tensor) -> torch.Tensor:
    """(B, 1, *S) any intensities -> (B, 2, *S): empirical CDF and robust [1 %, 99 %] rescaling."""
    flat = image.flatten(1).float()
    ordered = sorted_rows(flat[:, ::7])  # a fixed subsample sets the quantiles
    count = ordered.shape[1]
    low, high = ordered[:, int(0.01 * (count - 1))], ordered[:, int(0.99 * (count - 1))]
    linear = ((flat - low[:, None]) / (high - low).clamp_min(1e-6)[:, None]).clamp(-1.0, 2.0)
    quantiles = ordered[:, torch.linspace(0, count - 1, CDF_BINS + 1).round().long()].contiguous()
    upper = torch.searchsorted(quantiles, flat.contiguous(), right=True).clamp(1, CDF_BINS)
    below, above = quantiles.gather(1, upper - 1), quantiles.gather(1, upper)
    within = ((flat - below) / (above - below).clamp_min(1e-12)).clamp(0, 1)
    cdf = (upper - 1 + within) / CDF_BINS
    return torch.stack([cdf, linear], 1).view(image.shape[0], 2, *image.shape[2:])


def sorted_rows(values: torch.Tensor) -> torch.Tensor:
    """``values.sort(dim=1).values`` of a 2D tensor; on the CPU without gradients by NumPy, whose SIMD
    sort took 0.18 ms for a 64³ crop's 37449 sampled values here against torch's 3.1 ms (same order)."""
    if values.device.type != "cpu" or values.requires_grad or torch.onnx.is_in_onnx_export():
        return values.sort(dim=1).values
    return torch.from_numpy(np.sort(values.numpy(), axis=1))


def click_maps(
    coords: torch.Tensor | None, labels: torch.Tensor | None, size: int, sigma: float = CLICK_SIGMA
) -> torch.Tensor:
    """(B, 2, S, S, S) include / exclude maps: the max over clicks of a Gaussian at each click.

    ``coords`` (B, N, 3) in ROI voxels (tensor index order), ``labels`` (B, N): 1 include,
    0 exclude, -1 padding. Each Gaussian is the outer product of three 1D profiles, drawn within
    ``CLICK_RADIUS`` voxels of its click, so a stroke of hundreds of points costs little more than a click.
    """
    if coords is None:
        return torch.zeros(1, 2, size, size, size)
    batch, device = coords.shape[0], coords.device
    maps = torch.zeros(batch, 2 * size**3, device=device)
    for first in range(0, coords.shape[1], CLICK_MAP_POINTS):
        chunk = slice(first, first + CLICK_MAP_POINTS)
        flat, values = _click_gaussians(coords[:, chunk], labels[:, chunk], size, sigma)
        maps.scatter_reduce_(1, flat.reshape(batch, -1), values.reshape(batch, -1), "amax")
    return maps.view(batch, 2, size, size, size)


def _click_gaussians(
    coords: torch.Tensor, labels: torch.Tensor, size: int, sigma: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each click's Gaussian within ``CLICK_RADIUS``: (B, N, W, W, W) indices into the flattened
    [include map, exclude map] of :func:`click_maps` and the values there (0 outside the ROI)."""
    offsets = torch.arange(-CLICK_RADIUS, CLICK_RADIUS + 1, device=coords.device)
    positions = coords.round().long()[..., None] + offsets  # (B, N, 3, W): the voxels of each click's window
    inside = (positions >= 0) & (positions < size) & (labels >= 0)[..., None, None]
    profiles = torch.exp(-((positions - coords[..., None].float()) ** 2) / (2 * sigma**2)) * inside
    values = profiles[:, :, 0, :, None, None] * profiles[:, :, 1, None, :, None] * profiles[:, :, 2, None, None, :]
    positions = positions.clamp(0, size - 1)  # out-of-range voxels carry the value 0: max leaves the map as it is
    flat = (positions[:, :, 0, :, None, None] * size + positions[:, :, 1, None, :, None]) * size
    flat = flat + positions[:, :, 2, None, None, :] + (labels != 1).long()[..., None, None, None] * size**3
    return flat, values


def box_map(boxes: torch.Tensor | None, batch: int, size: int, device: torch.device) -> torch.Tensor:
    """(B, 1, S, S, S): 1 inside the box (B, 6) = (low corner, high corner) in ROI voxels, else 0."""
    if boxes is None:
        return torch.zeros(batch, 1, size, size, size, device=device)
    axis = torch.arange(size, dtype=torch.float32, device=device)
    inside = [((axis >= boxes[:, a, None] - 0.5) & (axis <= boxes[:, a + 3, None] + 0.5)).float() for a in range(3)]
    return (inside[0][:, :, None, None] * inside[1][:, None, :, None] * inside[2][:, None, None, :])[:, None]


def halve(x: torch.Tensor) -> torch.Tensor:
    """(B, C, D, H, W) -> 2×2×2 max pooling (``F.max_pool3d(x, 2)``), as the maxima of alternate planes
    along each axis in turn: elementwise on strided views, 15x faster than ``max_pool3d`` on 6-channel
    channels-last maps here."""
    for dim in (2, 3, 4):
        even = x.shape[dim] // 2 * 2
        x = torch.maximum(x.narrow(dim, 0, even)[_every_other(dim, 0)], x.narrow(dim, 0, even)[_every_other(dim, 1)])
    return x


def _every_other(dim: int, start: int) -> tuple[slice, ...]:
    """The index taking every other plane along ``dim`` from ``start``."""
    return (slice(None),) * dim + (slice(start, None, 2),)


def _even_sample(vectors: torch.Tensor, count: int) -> torch.Tensor:
    """(C, N) vectors -> at most ``count`` of them, evenly spaced (a stroke's many points)."""
    if vectors.shape[1] <= count:
        return vectors
    return vectors[:, torch.linspace(0, vectors.shape[1] - 1, count).round().long()]


def _dot_products(features: torch.Tensor, vectors: torch.Tensor) -> torch.Tensor:
    """(1, C, *S) channels-last features, (C, N) vectors -> (prod(S), N) dot products of every voxel's
    features with each vector.

    Up to ``SIMILARITY_FILTERS`` vectors: a 1×1×1 convolution (on the CPU oneDNN's, 3x faster here
    than the matrix product) whose filters are the vectors zero-padded to a multiple of 8 (its kernel
    for 8, 16 or 24 filters is 1.5-2x faster than for a count between them). More (a stroke's points):
    one matrix product, as oneDNN is 20x slower from 32 filters on: a decode with 128 points took 51 ms
    against 66-70 ms as convolutions of 24 filters (over the same slabs)."""
    count = vectors.shape[1]
    if count > SIMILARITY_FILTERS:
        return features.permute(0, 2, 3, 4, 1).reshape(-1, features.shape[1]) @ vectors
    weight = F.pad(vectors.T, (0, 0, 0, -count % 8))[..., None, None, None].contiguous()
    return conv3d(features, weight).permute(0, 2, 3, 4, 1).reshape(-1, weight.shape[0])[:, :count]


def _slab_products(unit: torch.Tensor, columns: torch.Tensor):
    """(first plane, (planes, S, S, N) dot products) of (1, C, S, S, S) features with (C, N) vectors,
    over slabs of about ``SIMILARITY_VALUES`` products."""
    size = unit.shape[-1]
    planes = max(1, SIMILARITY_VALUES // (size * size * max(columns.shape[1], 8)))
    for plane in range(0, size, planes):
        products = _dot_products(unit[:, :, plane : plane + planes], columns)
        yield plane, products.view(-1, size, size, columns.shape[1])


def _memoised_similarity(unit: torch.Tensor, channel: int, points: torch.Tensor, memo: dict) -> torch.Tensor:
    """The (S, S, S) similarity map of (1, C, S, S, S) ``unit`` features to those at ``points`` (N >= 1, 3),
    from ``memo``: kept for this set of voxels, or the map of the largest kept subset maxed with the
    rest's, or computed; the result is kept (the ``SIMILARITY_MEMO_MAPS`` latest)."""
    size = unit.shape[-1]
    voxels = frozenset(((points[:, 0] * size + points[:, 1]) * size + points[:, 2]).tolist())
    key = (channel, voxels)
    if key in memo:
        memo[key] = memo.pop(key)  # the latest used stays longest
        return memo[key]
    kept = [k for k in memo if k[0] == channel and k[1] < voxels]
    base = max(kept, key=lambda k: len(k[1]), default=(channel, frozenset()))
    missing = torch.tensor(sorted(voxels - base[1]), dtype=torch.long, device=unit.device)
    vectors = unit[0, :, missing // size**2, missing // size % size, missing % size]  # (C, N) not in the kept map
    similarity = unit.new_empty(size, size, size)
    for plane, products in _slab_products(unit, vectors):
        similarity[plane : plane + products.shape[0]] = products.amax(-1)
    similarity.clamp_min_(0)
    if base[1]:
        torch.maximum(similarity, memo[base], out=similarity)
    memo[key] = similarity
    while len(memo) > SIMILARITY_MEMO_MAPS:
        memo.pop(next(iter(memo)))
    return similarity


def _image_channels(layer: Conv3d, image_channels: int) -> slice:
    """The input channels of a prompt layer that the image features fill: they come after the
    coarser decoder output's (none at the coarsest scale) and before the ``PROMPT_MAPS``."""
    start = layer.in_channels - PROMPT_MAPS - image_channels
    return slice(start, start + image_channels)


def _prompt_layer(layer: nn.Sequential, inputs: torch.Tensor, share: torch.Tensor) -> torch.Tensor:
    """A prompt layer (convolution + LeakyReLU) on [coarser decoder output, prompt maps], plus the
    image features' precomputed share of its output (:meth:`ClickUNet3D._image_shares`)."""
    conv, activation = layer
    image = _image_channels(conv, conv.in_channels - inputs.shape[1])
    weight = torch.cat([conv.weight[:, : image.start], conv.weight[:, image.stop :]], 1)
    return activation(conv.apply_weights(inputs, weight, None).add_(share))


class ClickUNetFeatures(NamedTuple):
    """What :meth:`ClickUNet3D.encode` caches per ROI (all channels-last 3D tensors), and the
    similarity maps of its latest click sets (``memo``: see :meth:`ClickUNet3D._similarity`)."""

    shares: list[torch.Tensor]  # scales 1, 2, ... (S/2, S/4, ...): the image's share of that scale's prompt layer
    unit: torch.Tensor  # (B, fine_channels, S, S, S) unit-length fine features, for the similarity maps
    head: torch.Tensor  # (B, prompt_channels[0], S, S, S) the fine features' share of the first head layer
    memo: dict | None = None  # (include or exclude, frozenset of clicked voxels) -> (S, S, S) map; batch of one

    def memo_bytes_at_most(self) -> int:
        """What ``memo`` may come to hold: ``SIMILARITY_MEMO_MAPS`` maps of the fine grid (0 without one)."""
        if self.memo is None:
            return 0
        return SIMILARITY_MEMO_MAPS * self.unit[0, 0].nelement() * self.unit.element_size()

    def expand(self, batch: int) -> ClickUNetFeatures:
        """The same features for a batch of ``batch`` prompt sets (from a batch of one; no memo)."""
        if self.unit.shape[0] == batch:
            return self
        grow = [t.expand(batch, *t.shape[1:]) for t in (*self.shares, self.unit, self.head)]
        return ClickUNetFeatures(grow[: len(self.shares)], grow[-2], grow[-1])


class ClickUNet3D(nn.Module):
    """U-Net image features cached per ROI + a light prompt decoder (see the module docstring)."""

    supports_boxes = True
    dense_prompts = True  # strokes reach it as one point per ROI voxel they cover (the engine's Session)
    # encode gives the same features for any rescaling (x - a) / s, s > 0, of the crop (intensity_channels):
    # the engine's z-score of the crop (5-8 ms of a first click) would change nothing but float rounding
    rescaling_invariant = True

    def __init__(self, config: ClickUNetConfig = DEFAULT_CONFIG) -> None:
        super().__init__()
        self.config = config
        c, p, levels = config.channels, config.prompt_channels, len(config.channels)
        self.down = nn.ModuleList(
            DoubleConv(STEM_CHANNELS if i == 0 else c[i - 1], c[i], 1 if i == 0 else 2) for i in range(levels)
        )
        self.project = nn.ModuleList(Pointwise(c[i + 1], c[i]) for i in range(levels - 1))
        self.merge = nn.ModuleList(
            ConvNormAct(2 * c[i], c[i]) if i else ConvNormAct(2 * c[0], config.fine_channels, kernel=1)
            for i in range(levels - 1)
        )
        prompts = PROMPT_MAPS
        self.coarse = nn.Sequential(Conv3d(c[-1] + prompts, p[-1], 3, padding=1), nn.LeakyReLU(0.01, inplace=True))
        self.fuse = nn.ModuleList(
            nn.Sequential(
                Conv3d(p[i + 1] + c[i] + prompts, p[i], 3, padding=1)
                if i > 1
                else Pointwise(p[i + 1] + c[i] + prompts, p[i]),
                nn.LeakyReLU(0.01, inplace=True),
            )
            for i in range(1, levels - 1)
        )
        # The first head layer on [upsampled decoder, fine features, prompts] is split in three:
        # the fine features' share is computed once per ROI, the decoder's before upsampling.
        self.head_fine = Pointwise(config.fine_channels, p[0])
        self.head_decoder = Pointwise(p[1], p[0], bias=False)
        self.head_prompts = Pointwise(prompts, p[0], bias=False)
        self.head_out = Pointwise(p[0], 1)
        self.to(memory_format=CHANNELS_LAST)  # oneDNN's fast 3D kernels, forward and backward

    @classmethod
    def from_config(cls, config: ClickUNetConfig) -> ClickUNet3D:
        """An untrained model of this architecture, in eval mode."""
        return cls(config).eval()

    @property
    def spatial_dims(self) -> int:
        return self.config.spatial_dims

    @property
    def img_size(self) -> int:
        return self.config.img_size

    @property
    def roi_spacing(self) -> float:
        return self.config.spacing

    @property
    def roi_spacings(self) -> tuple[float, ...]:
        """The ROI spacings the model was trained at, finest first (the engine's zoom levels)."""
        fine = self.config.fine_spacing
        return (fine, self.config.spacing) if fine and fine < self.config.spacing else (self.config.spacing,)

    @property
    def roi_padding(self) -> str:
        """The crop continues the volume's border voxels where it leaves the volume: thin slabs (a
        20-slice CT) would otherwise be mostly zeros, which the model over-segments into."""
        return "edge"

    @property
    def low_res_size(self) -> tuple[int, int, int]:
        return (self.config.img_size,) * 3

    def encode(self, image: torch.Tensor) -> ClickUNetFeatures:
        """(B, 1, S, S, S) crop (any intensity range) -> the cached features."""
        return self.encode_channels(intensity_channels(image))

    def encode_channels(self, channels: torch.Tensor) -> ClickUNetFeatures:
        """(B, 2, S, S, S) :func:`intensity_channels` -> the cached features: the U-Net part of
        :meth:`encode` (what an ONNX export of the encoder holds, :mod:`fastsam3d.runtime`)."""
        fine, *levels = self.image_features(channels)
        # the norm in one pass over channels-last memory (fine * fine then a sum over channels: 5x
        # slower); out of place: autograd saves the norm for backward
        unit = fine * (torch.linalg.vector_norm(fine, dim=1, keepdim=True).square() + 1e-12).rsqrt()
        return ClickUNetFeatures(self._image_shares(levels), unit, self.head_fine(fine), {})

    def image_features(self, channels: torch.Tensor) -> list[torch.Tensor]:
        """(B, 2, S, S, S) :func:`intensity_channels` -> the U-Net's decoded features at every scale,
        finest first: (B, fine_channels, S, S, S), (B, channels[1], S/2, ...), ..."""
        x = F.pad(channels, (0, 0, 0, 0, 0, 0, 0, STEM_CHANNELS - channels.shape[1]))
        if not torch.onnx.is_in_onnx_export():  # oneDNN's layout; an ONNX graph has none
            x = x.contiguous(memory_format=CHANNELS_LAST)
        skips = []
        for block in self.down:
            x = block(x)
            skips.append(x)
        decoded = [x]
        for level in reversed(range(len(self.merge))):
            x = upsample_2x(self.project[level](x))
            x = self.merge[level](torch.cat([x, skips[level]], 1))
            decoded.append(x)
        return decoded[::-1]

    def _image_shares(self, levels: list[torch.Tensor]) -> list[torch.Tensor]:
        """Each scale's prompt layer (``fuse``, ``coarse``) splits by its input channels, [coarser
        decoder output, image features, prompt maps]: the image features' part, bias included, is
        the same for every click and is computed here, once per ROI."""
        layers = [*(fuse[0] for fuse in self.fuse), self.coarse[0]]
        shares = []
        for layer, features in zip(layers, levels, strict=True):
            image = _image_channels(layer, features.shape[1])
            shares.append(layer.apply_weights(features, layer.weight[:, image], layer.bias))
        return shares

    def decode(
        self,
        image_embedding: ClickUNetFeatures,
        point_coords: torch.Tensor | None,
        point_labels: torch.Tensor | None,
        boxes: torch.Tensor | None = None,
        mask_input: torch.Tensor | None = None,
        multimask_output: bool = False,
        honour_clicks: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompts on cached features -> logits (B, 1, S, S, S) and a placeholder score (B, 1).

        Args:
            point_coords: (B, N, 3) ROI voxel coordinates in tensor index order; labels (B, N)
                with 1 include, 0 exclude, -1 padding.
            boxes: (B, 6) low and high corners in ROI voxels.
            mask_input: (B, 1, S, S, S) logits of the previous prediction (None = zero logits).
        The prompts' batch may exceed the features' batch of one (uncertainty runs).
        """
        given = [t.shape[0] for t in (point_coords, boxes, mask_input) if t is not None]
        features = image_embedding.expand(max([image_embedding.unit.shape[0], *given]))
        batch = features.unit.shape[0]
        prompts = self._prompt_maps(features, point_coords, point_labels, boxes, mask_input)
        pyramid = [prompts]
        for _ in features.shares:
            pyramid.append(halve(pyramid[-1]))
        x = _prompt_layer(self.coarse, pyramid[-1], features.shares[-1])
        for level in reversed(range(1, len(features.shares))):
            x = upsample_2x(x)
            x = _prompt_layer(self.fuse[level - 1], torch.cat([x, pyramid[level]], 1), features.shares[level - 1])
        # in place on the upsampled tensor: none of these operations' backward needs what they overwrite
        hidden = upsample_2x(self.head_decoder(x))
        hidden = F.leaky_relu_(hidden.add_(features.head).add_(self.head_prompts(prompts)), 0.01)
        logits = self.head_out(hidden)
        if honour_clicks and point_coords is not None:
            logits = self._honour(logits, point_coords, point_labels)
        return logits.contiguous(), logits.new_ones(batch, 1)

    @staticmethod
    def _prompt_maps(
        features: ClickUNetFeatures,
        coords: torch.Tensor | None,
        labels: torch.Tensor | None,
        boxes: torch.Tensor | None,
        mask_input: torch.Tensor | None,
    ) -> torch.Tensor:
        """(B, PROMPT_MAPS, S, S, S) in channels-last memory, each map written where it lies (no
        concatenation, no layout copy): include / exclude clicks, the previous probability, the box,
        and the include / exclude similarity maps."""
        unit = features.unit
        batch, size, device = unit.shape[0], unit.shape[-1], unit.device
        prompts = unit.new_empty(batch, size, size, size, PROMPT_MAPS).permute(0, 4, 1, 2, 3)
        prompts[:, 0:2] = click_maps(coords, labels, size).to(device)
        if mask_input is None:  # no previous prediction: zero logits, as the engine and training pass
            prompts[:, 2] = 0.5
        else:
            prompts[:, 2:3] = torch.sigmoid(mask_input)
        prompts[:, 3:4] = box_map(boxes, batch, size, device)
        memo = None if unit.requires_grad else features.memo  # under autograd every map is computed afresh
        ClickUNet3D._similarity(unit, coords, labels, prompts[:, 4:6], memo)
        return prompts

    @staticmethod
    def _similarity(
        unit: torch.Tensor,
        coords: torch.Tensor | None,
        labels: torch.Tensor | None,
        out: torch.Tensor,
        memo: dict | None = None,
    ) -> None:
        """Write into ``out`` (B, 2, S, S, S) the max cosine similarity (clamped at 0) of every voxel's
        unit features to those under the include / exclude clicks (0 without such clicks).

        The products (:func:`_dot_products`) are computed over slabs of planes, about
        ``SIMILARITY_VALUES`` at a time, each slab's maxima written where they lie. With a ``memo``
        (a batch of one, up to ``SIMILARITY_POINTS`` points per kind) each map is kept per set of
        clicked voxels: a click that adds a point compares only with it and takes the maximum with
        the map of the set before, and an undo finds its map kept (the maps' cost grew with the
        clicks: the trained default's decoder took 13 ms at 2 clicks and 27 ms at 40)."""
        batch, size = unit.shape[0], unit.shape[-1]
        if coords is None:
            out.zero_()
            return
        index = coords.round().long().clamp(0, size - 1)
        for b in range(batch):
            groups = [index[b][labels[b] == value] for value in (1, 0)]  # (N, 3) include, exclude voxels
            if memo is not None and batch == 1 and all(len(g) <= SIMILARITY_POINTS for g in groups):
                for channel, points in enumerate(groups):
                    if len(points):
                        out[b, channel].copy_(_memoised_similarity(unit, channel, points, memo))
                    else:
                        out[b, channel].zero_()
                continue
            sampled = [_even_sample(unit[b, :, g[:, 0], g[:, 1], g[:, 2]], SIMILARITY_POINTS) for g in groups]  # (C, N)
            columns, includes = torch.cat(sampled, 1), sampled[0].shape[1]
            if columns.shape[1] == 0:  # padding only
                out[b].zero_()
                continue
            spans = (slice(0, includes), slice(includes, columns.shape[1]))  # include, exclude columns
            for plane, products in _slab_products(unit[b : b + 1], columns):
                for channel, span in enumerate(spans):
                    target = out[b, channel, plane : plane + products.shape[0]]
                    if span.start == span.stop:
                        target.zero_()
                    else:
                        target.copy_(products[..., span].amax(-1).clamp_min(0))

    @staticmethod
    def _honour(logits: torch.Tensor, coords: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Push the 2×2×2 cells around each click past ±CLICK_MARGIN, include up and exclude down,
        later clicks winning where they meet: as clamping the cells click by click, where a cell both
        kinds reach ends at exactly ±CLICK_MARGIN (the sign of the last), computed for all the
        touched cells at once (a lasso's thousands of points took 77 ms click by click)."""
        batch, size = logits.shape[0], logits.shape[-1]
        cells = coords.floor().long()[:, :, None] + CELL_CORNERS.to(coords.device)  # (B, N, 8, 3)
        inside = ((cells >= 0) & (cells < size)).all(-1) & (labels >= 0)[..., None]
        flat = (cells[..., 0] * size + cells[..., 1]) * size + cells[..., 2]
        order = torch.arange(coords.shape[1], device=coords.device)[:, None].expand(inside.shape[1:])
        honoured = logits.clone()
        for b in range(batch):
            touched, cell = torch.unique(flat[b][inside[b]], return_inverse=True)
            click, include = order[inside[b]], (labels[b, :, None].expand(inside.shape[1:])[inside[b]] == 1)
            last = [
                torch.full(touched.shape, -1, device=coords.device).scatter_reduce_(
                    0, cell, torch.where(include == kind, click, -1), "amax"
                )
                for kind in (True, False)
            ]
            values = honoured[b, 0].view(-1)[touched]
            both, include_last = (last[0] >= 0) & (last[1] >= 0), last[0] > last[1]
            pushed = torch.where(include_last, values.clamp_min(CLICK_MARGIN), values.clamp_max(-CLICK_MARGIN))
            margin = torch.where(include_last, CLICK_MARGIN, -CLICK_MARGIN).to(values.dtype)
            honoured[b, 0].view(-1)[touched] = torch.where(both, margin, pushed)
        return honoured

    def upsample(self, low_res_logits: torch.Tensor) -> torch.Tensor:
        """The logits are already at the ROI resolution."""
        return low_res_logits
