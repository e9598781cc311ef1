"""A segment-anything model: image encoder + prompt encoder + mask decoder, in 2D or 3D.

The heavy encoder and the light per-click path (prompt encoder + decoder on a cached embedding)
are separate calls, as in ``segment_anything``'s ``Sam``; state-dict keys are the official ones.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .mask_decoder import MaskDecoder
from .prompt_encoder import PromptEncoder


class Sam(nn.Module):
    """Holds the three parts; :class:`~fastsam3d.modeling.sam3d.Sam3D` and
    :class:`~fastsam3d.modeling.sam2d.Sam2D` add their config and input conventions."""

    def __init__(self, image_encoder: nn.Module, prompt_encoder: PromptEncoder, mask_decoder: MaskDecoder) -> None:
        super().__init__()
        self.image_encoder = image_encoder
        self.prompt_encoder = prompt_encoder
        self.mask_decoder = mask_decoder

    @property
    def spatial_dims(self) -> int:
        return self.prompt_encoder.spatial_dims

    @property
    def img_size(self) -> int:
        """Edge of the square / cubic input the encoder takes (128 for the official 3D models)."""
        return self.image_encoder.img_size

    @property
    def supports_boxes(self) -> bool:
        """Whether boxes are encoded (learned box corners) rather than emulated by the session."""
        return self.prompt_encoder.supports_boxes

    @property
    def low_res_size(self) -> tuple[int, ...]:
        """Shape of the low-res logits the decoder returns and takes back as a mask prompt."""
        return self.prompt_encoder.mask_input_size

    def encode(self, image: torch.Tensor) -> torch.Tensor:
        """(B, channels, *input size) prepared input -> (B, C, *grid) image embedding."""
        return self.image_encoder(image)

    def decode(
        self,
        image_embedding: torch.Tensor,
        point_coords: torch.Tensor | None,
        point_labels: torch.Tensor | None,
        boxes: torch.Tensor | None = None,
        mask_input: torch.Tensor | None = None,
        multimask_output: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompt encoder + mask decoder on a cached embedding.

        Args:
            point_coords: (B, N, spatial_dims) in the prompt encoder's frame (3D: crop voxels in
                tensor index order; 2D: (x, y) input pixels); labels (B, N).
            boxes: (B, 2 * spatial_dims), two opposite corners in the same frame.
            mask_input: (B, 1, *low_res_size) logits of the previous prediction.
        Returns:
            low-res mask logits (B, M, *low_res_size) and predicted IoU (B, M).
        """
        points = None if point_coords is None else (point_coords, point_labels)
        sparse, dense = self.prompt_encoder(points, boxes, mask_input)
        return self.mask_decoder(image_embedding, self.prompt_encoder.get_dense_pe(), sparse, dense, multimask_output)

    def upsample(self, low_res_logits: torch.Tensor) -> torch.Tensor:
        """Linear (align_corners=False) upsampling of low-res logits to the input size."""
        mode = "trilinear" if self.spatial_dims == 3 else "bilinear"
        return F.interpolate(low_res_logits, size=(self.img_size,) * self.spatial_dims, mode=mode, align_corners=False)
