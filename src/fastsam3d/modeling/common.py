"""Small layers shared by the encoder, prompt encoder and decoder."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class LayerNorm3d(nn.Module):
    """LayerNorm over the channel axis of a (B, C, *spatial) tensor (biased variance); any number
    of spatial axes (:class:`LayerNorm2d` is the same layer)."""

    def __init__(self, num_channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(1, keepdim=True)
        var = (x - mean).pow(2).mean(1, keepdim=True)
        x = (x - mean) / torch.sqrt(var + self.eps)
        shape = (1, -1) + (1,) * (x.dim() - 2)
        return self.weight.view(shape) * x + self.bias.view(shape)


LayerNorm2d = LayerNorm3d


class PatchExpand3d(nn.ConvTranspose3d):
    """``ConvTranspose3d`` with kernel = stride and no padding, computed as one matrix product.

    Each input voxel becomes an independent k³ block of outputs, so the layer is a linear map per
    voxel followed by a reshuffle: the same result (and state dict) as ``nn.ConvTranspose3d``,
    several times faster on CPU than its generic kernel.
    """

    def __init__(self, in_channels: int, out_channels: int, scale: int = 2) -> None:
        super().__init__(in_channels, out_channels, kernel_size=scale, stride=scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, _, d, h, w = x.shape
        k = self.kernel_size[0]
        out_channels = self.out_channels
        weight = self.weight.reshape(self.in_channels, out_channels * k**3)
        y = x.flatten(2).transpose(1, 2) @ weight  # (B, DHW, C_out * k³)
        y = y.view(batch, d, h, w, out_channels, k, k, k).permute(0, 4, 1, 5, 2, 6, 3, 7)
        y = y.reshape(batch, out_channels, d * k, h * k, w * k)
        return y + self.bias.view(1, -1, 1, 1, 1)

    def expand_rows(self, rows: torch.Tensor) -> torch.Tensor:
        """The same layer on voxel rows: (B, R, C_in) -> (B, R·k³, C_out), each voxel's k³ children
        consecutive (in kernel order) instead of placed in space."""
        k3 = self.kernel_size[0] ** 3
        weight = self.weight.permute(0, 2, 3, 4, 1).reshape(self.in_channels, k3 * self.out_channels)
        out = F.linear(rows, weight.t(), self.bias.repeat(k3))
        return out.view(rows.shape[0], rows.shape[1] * k3, self.out_channels)


def gelu_of_fresh(x: torch.Tensor) -> torch.Tensor:
    """GELU of a tensor nobody else holds (a layer's fresh output), in place where autograd does not
    record it: a second output of the same size is fresh pages (the mask decoder's 6 MB upscaling
    cost the student ~4 ms a click, 26.6 -> 22.5 ms, interleaved)."""
    return F.gelu(x) if x.requires_grad else torch.ops.aten.gelu_(x)


class MLPBlock(nn.Module):
    """Two linear layers with an activation in between (the transformer feed-forward)."""

    def __init__(self, embedding_dim: int, mlp_dim: int, act: type[nn.Module] = nn.GELU) -> None:
        super().__init__()
        self.lin1 = nn.Linear(embedding_dim, mlp_dim)
        self.lin2 = nn.Linear(mlp_dim, embedding_dim)
        self.act = act()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = self.lin1(x)
        if type(self.act) is not nn.GELU or self.act.approximate != "none":
            return self.lin2(self.act(hidden))
        hidden = gelu_of_fresh(hidden)  # the hidden layer is fresh, and nobody else holds it
        if not hidden.requires_grad and hasattr(self.lin2, "forward_owned"):  # an int8 layer scales it in place
            return self.lin2.forward_owned(hidden)
        return self.lin2(hidden)


class MLP(nn.Module):
    """``num_layers`` linear layers with ReLU between them (hypernetworks, IoU head)."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int) -> None:
        super().__init__()
        dims_in = [input_dim] + [hidden_dim] * (num_layers - 1)
        dims_out = [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(nn.Linear(i, o) for i, o in zip(dims_in, dims_out, strict=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for index, layer in enumerate(self.layers):
            x = layer(x)
            if index < len(self.layers) - 1:
                x = torch.relu(x)
        return x
