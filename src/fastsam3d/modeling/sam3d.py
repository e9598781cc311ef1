"""The 3D SAM: image encoder + prompt encoder + mask decoder (keys as in SAM-Med3D's ``Sam3D``)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..preprocess import TARGET_SPACING_MM
from .image_encoder import ImageEncoderViT3D
from .mask_decoder import MaskDecoder3D
from .prompt_encoder import PromptEncoder3D


class Sam3D(nn.Module):
    """Holds the three parts; the heavy encoder and the light per-click path are separate calls."""

    def __init__(
        self, image_encoder: ImageEncoderViT3D, prompt_encoder: PromptEncoder3D, mask_decoder: MaskDecoder3D
    ) -> None:
        super().__init__()
        self.image_encoder = image_encoder
        self.prompt_encoder = prompt_encoder
        self.mask_decoder = mask_decoder

    @property
    def img_size(self) -> int:
        """Edge of the cubic crop the encoder takes (128 for the official models)."""
        return self.image_encoder.img_size

    @property
    def roi_spacing(self) -> float:
        """Millimetres per crop voxel (the models were trained at 1.5 mm)."""
        return TARGET_SPACING_MM

    @property
    def roi_padding(self) -> str:
        """What the crop holds where it leaves the volume: zeros, as in training (torchio CropOrPad)."""
        return "zero"

    @property
    def supports_boxes(self) -> bool:
        """Whether boxes are encoded (learned box corners) rather than emulated by the session."""
        return self.prompt_encoder.supports_boxes

    @property
    def low_res_size(self) -> tuple[int, int, int]:
        """Shape of the low-res logits the decoder returns and takes back as a mask prompt."""
        return self.prompt_encoder.mask_input_size

    def encode(self, image: torch.Tensor) -> torch.Tensor:
        """(B, 1, S, S, S) normalised crop -> (B, C, g, g, g) image embedding."""
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
            point_coords: (B, N, 3) crop voxel coordinates in tensor index order; labels (B, N).
            mask_input: (B, 1, *low_res_size) logits of the previous prediction.
        Returns:
            low-res mask logits (B, M, *low_res_size) and predicted IoU (B, M).
        """
        points = None if point_coords is None else (point_coords, point_labels)
        sparse, dense = self.prompt_encoder(points, boxes, mask_input)
        return self.mask_decoder(
            image_embedding, self.prompt_encoder.get_dense_pe(), sparse, dense, multimask_output
        )

    def upsample(self, low_res_logits: torch.Tensor) -> torch.Tensor:
        """Trilinear (align_corners=False) upsampling of low-res logits to the crop size."""
        return F.interpolate(low_res_logits, size=(self.img_size,) * 3, mode="trilinear", align_corners=False)
