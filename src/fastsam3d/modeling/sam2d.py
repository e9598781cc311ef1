"""A 2D SAM (SAM, MedSAM, LiteMedSAM, SAM-Med2D), keys as in ``segment_anything``'s ``Sam``."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .sam3d import Sam3D


class Sam2D(Sam3D):
    """The same three parts and per-click path as :class:`Sam3D`, with 2D parts: ``encode`` takes
    (B, 3, S, S) images already scaled as the model expects; ``decode`` takes points (B, N, 2) as
    (x, y) input pixels and boxes (B, 4) as x0, y0, x1, y1, and returns (B, M, *low_res_size) logits."""

    def upsample(self, low_res_logits: torch.Tensor) -> torch.Tensor:
        """Bilinear (align_corners=False) upsampling of low-res logits to the input size."""
        return F.interpolate(low_res_logits, size=(self.img_size,) * 2, mode="bilinear", align_corners=False)
