"""Lower-precision inference for any ``nn.Module``: int8 (dynamic quantisation) and bf16.

    apply_precision(model.image_encoder, "int8")   # in place; returns the module
    apply_precision(tiny_vit, "int8")              # any module with Linear layers

* ``"int8"`` (CPU): every ``nn.Linear`` becomes an :class:`Int8Linear`: weights quantised once per
  output channel (symmetric int8), activations quantised per call with one scale per token (PyTorch's x86/fbgemm
  ``quantized::linear_dynamic``, int32 accumulation, fp32 output). Convolutions that are a matrix
  product in disguise (kernel = stride and no padding: patch embeddings and 1×1 convolutions) are
  turned into the same int8 product; with ``convs="all"``, so are the other ungrouped
  convolutions, by unfolding their input (im2col: only sensible for small inputs such as the ViT
  neck on its 8³ token grid). Weights take a quarter of the memory.
* ``"bf16"``: weights stored in bfloat16 and the forward (and ``encode`` / ``decode``) run under
  bf16 autocast, outputs cast back to float32, so callers see float32 tensors. It pays on GPUs
  and on CPUs with AVX512-BF16 / AMX; elsewhere it is emulated and slower.
* ``"fp32"``: nothing changes.

:func:`fastsam3d.runtime.apply_model_precision` applies a precision to a whole segmentation model
(for a 3D SAM: its image encoder) and :func:`fastsam3d.runtime.default_precision` is what ``"auto"`` picks.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import nn

from ..configs import PRECISIONS


def int8_available() -> bool:
    """Whether this PyTorch build has the CPU int8 kernels (x86 / fbgemm)."""
    engines = torch.backends.quantized.supported_engines
    kernels = hasattr(torch.ops.quantized, "linear_dynamic") and hasattr(torch, "quantize_per_channel")
    return kernels and any(engine in engines for engine in ("x86", "fbgemm"))


def _quantise_weight(weight: torch.Tensor) -> torch.Tensor:
    """(out, in) float weight -> per-output-channel symmetric qint8 tensor."""
    weight = weight.detach().float().contiguous()
    scale = weight.abs().amax(1).clamp_min(1e-12).double() / 127.0
    zero = torch.zeros(weight.shape[0], dtype=torch.long)
    with warnings.catch_warnings():  # quantised tensors are deprecated in favour of torchao (not installed)
        warnings.simplefilter("ignore")
        return torch.quantize_per_channel(weight, scale, zero, 0, torch.qint8)


class Int8Linear(nn.Module):
    """``nn.Linear`` with int8 weights and per-call int8 activations (fp32 in, fp32 out).

    Keeps ``in_features``, ``out_features`` and the float ``bias`` readable (the 3D attention reads
    the qkv bias); ``weight`` dequantises on access. Inference only: no gradients.

    ``per_token`` (default) scales every row to max |x| = 1 before the kernel's per-call
    quantisation, so one outlier token does not coarsen the others' steps (a token 20x larger
    than the rest: correlation of the others 0.975 per call, 0.9999 per token; a random-weight
    tiny student's first-click logits through the engine 0.9966 vs 0.9997; a trained 3D SAM's
    masks on 65 real structures, min Dice vs fp32 0.909 vs 0.987). Its four extra
    element-wise passes cost speed: official student encoder 1.51x faster than fp32 per call,
    1.05x per token, interleaved on 2 busy cores. ``per_token=False`` is the faster, riskier form.
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, per_token: bool = True) -> None:
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.per_token = per_token
        bias = None if bias is None else bias.detach().float().contiguous()
        self.register_buffer("bias", bias)
        # With per-token scaling the bias is added after the rescaling, outside the packed product.
        self._packed = torch.ops.quantized.linear_prepack(_quantise_weight(weight), None if per_token else bias)

    @classmethod
    def from_linear(cls, linear: nn.Linear, per_token: bool = True) -> Int8Linear:
        return cls(linear.weight, linear.bias, per_token)

    @property
    def weight(self) -> torch.Tensor:
        qweight, _ = torch.ops.quantized.linear_unpack(self._packed)
        return qweight.dequantize()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._forward(x, owned=False)

    def forward_owned(self, x: torch.Tensor) -> torch.Tensor:
        """``forward`` of a tensor the caller no longer needs, which it may overwrite: the per-token
        scaling works in place (a scaled copy of a ViT-B feed-forward's hidden layer is 6 MB of fresh
        pages: 2 ms a block on 2 AVX2 cores)."""
        return self._forward(x, owned=True)

    def _forward(self, x: torch.Tensor, owned: bool) -> torch.Tensor:
        shape = x.shape
        rows = x.detach().float().reshape(-1, shape[-1]).contiguous()  # the int8 kernel has no gradient
        # reduce_range: 7-bit activations, so AVX2 int8 products (no VNNI) cannot saturate.
        if not self.per_token:
            return torch.ops.quantized.linear_dynamic(rows, self._packed, True).view(*shape[:-1], self.out_features)
        # each token's largest magnitude, as max(max, -min): no copy of the activations (abs() made one)
        scale = torch.maximum(rows.amax(1, keepdim=True), rows.amin(1, keepdim=True).neg_()).clamp_min_(1e-12)
        ours = owned or rows.data_ptr() != x.data_ptr()  # given to us, or already a copy
        out = torch.ops.quantized.linear_dynamic(rows.div_(scale) if ours else rows / scale, self._packed, True)
        # in place on the kernel's fresh output: a new one is fresh pages (6 MB for a ViT-B MLP)
        out = out.mul_(scale) if self.bias is None else torch.addcmul(self.bias, out, scale, out=out)
        return out.view(*shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8"


class Int8Conv(nn.Module):
    """An ungrouped ``Conv2d``/``Conv3d`` as an int8 matrix product over unfolded input patches.

    Output is channels-first like the convolution's. Kernel = stride without padding (patch
    embeddings, 1×1) needs only a reshape; other kernels unfold the padded input (im2col).
    """

    def __init__(self, conv: nn.Conv2d | nn.Conv3d, per_token: bool = True) -> None:
        super().__init__()
        self.kernel = tuple(conv.kernel_size)
        self.stride = tuple(conv.stride)
        self.padding = tuple(conv.padding)
        self.out_channels = conv.out_channels
        self.linear = Int8Linear(conv.weight.flatten(1), conv.bias, per_token)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        spatial = len(self.kernel)
        if any(self.padding):
            pad = [p for size in reversed(self.padding) for p in (size, size)]
            x = F.pad(x, pad)
        for axis, (k, s) in enumerate(zip(self.kernel, self.stride, strict=True)):
            x = x.unfold(2 + axis, k, s)  # (B, C, *out, *kernel)
        order = (0, *range(2, 2 + spatial), 1, *range(2 + spatial, 2 + 2 * spatial))
        patches = x.permute(order)  # (B, *out, C, *kernel): the conv weight's (in, *kernel) order
        out_shape = patches.shape[: 1 + spatial]
        y = self.linear(patches.reshape(*out_shape, -1))
        return y.permute(0, spatial + 1, *range(1, spatial + 1))


def _int8(module: nn.Module, convs: str, per_token: bool) -> None:
    for name, child in list(module.named_children()):
        if type(child) is nn.Linear:
            setattr(module, name, Int8Linear.from_linear(child, per_token))
        elif isinstance(child, (nn.Conv2d, nn.Conv3d)) and convs != "none" and _convertible(child, convs):
            setattr(module, name, Int8Conv(child, per_token))
        else:
            _int8(child, convs, per_token)


def _convertible(conv: nn.Conv2d | nn.Conv3d, convs: str) -> bool:
    if conv.groups != 1 or any(d != 1 for d in conv.dilation) or conv.padding_mode != "zeros":
        return False
    if isinstance(conv.padding, str):
        return False
    if type(conv) not in (nn.Conv2d, nn.Conv3d) and convs != "all":
        return False  # a subclass with its own forward (e.g. a channels-last pointwise conv)
    patch_like = tuple(conv.kernel_size) == tuple(conv.stride) and not any(conv.padding)
    return patch_like or convs == "all"


def _cast(value, dtype: torch.dtype):
    """Floating tensors inside (nested) tuples / lists / NamedTuples cast to ``dtype``."""
    if isinstance(value, torch.Tensor):
        return value.to(dtype) if value.is_floating_point() else value
    if isinstance(value, tuple) and hasattr(value, "_fields"):
        return type(value)(*(_cast(v, dtype) for v in value))
    if isinstance(value, (list, tuple)):
        return type(value)(_cast(v, dtype) for v in value)
    return value


def _bf16(module: nn.Module) -> None:
    module.to(torch.bfloat16)
    device = next((p.device.type for p in module.parameters()), "cpu")
    for name in ("forward", "encode", "decode"):  # Sam3D and ClickUNet3D are used through encode / decode
        method = getattr(module, name, None)
        if callable(method):
            setattr(module, name, _autocasting(method, device))


def _autocasting(method, device: str):
    """``method`` under bf16 autocast (matrix products and convolutions in bf16, norms and
    reductions in fp32), with its floating outputs returned as float32."""

    def wrapped(*args, **kwargs):
        with torch.autocast(device, dtype=torch.bfloat16):
            return _cast(method(*args, **kwargs), torch.float32)

    wrapped.__wrapped__ = method
    return wrapped


def apply_precision(module: nn.Module, precision: str, convs: str = "patch", per_token: bool = True) -> nn.Module:
    """Run ``module`` in ``precision`` (``"fp32"``, ``"bf16"`` or ``"int8"``), in place.

    Args:
        module: any module; for int8 its ``nn.Linear`` layers (and convolutions, see ``convs``)
            are replaced, so keep an fp32 copy if you need one.
        convs: for int8, which convolutions become int8 products: ``"patch"`` (kernel = stride,
            no padding: patch embeddings and 1×1), ``"all"`` (also the others, by im2col),
            ``"none"``.
        per_token: for int8, one activation scale per token (default) rather than one per call
            (see :class:`Int8Linear`): robust to outlier tokens, slower.
    Returns the module (for chaining). int8 needs the module on the CPU.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}")
    if convs not in ("patch", "all", "none"):
        raise ValueError(f"convs must be 'patch', 'all' or 'none', got {convs!r}")
    if precision == "int8":
        devices = {p.device.type for p in module.parameters()}
        if devices - {"cpu"}:
            raise ValueError(f"int8 runs on the CPU only (the module is on {sorted(devices)}); use bf16 on a GPU")
        if not int8_available():
            raise ValueError("this PyTorch build has no CPU int8 kernels (x86/fbgemm); use fp32")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _int8(module, convs, per_token)
    elif precision == "bf16":
        _bf16(module)
    module.precision = precision
    return module
