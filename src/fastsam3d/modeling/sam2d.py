"""A 2D SAM (SAM, MedSAM, LiteMedSAM): image encoder + prompt encoder + mask decoder, keys as in
``segment_anything``'s ``Sam``. Images go in as (B, 3, S, S) already scaled as the model expects."""

from __future__ import annotations

import torch
from torch import nn

from .mask_decoder import MaskDecoder3D
from .prompt_encoder2d import PromptEncoder2D


class Sam2D(nn.Module):
    """Encoder once per slice, prompt encoder + decoder per prompt (the per-click path)."""

    def __init__(self, image_encoder: nn.Module, prompt_encoder: PromptEncoder2D, mask_decoder: MaskDecoder3D) -> None:
        super().__init__()
        self.image_encoder = image_encoder
        self.prompt_encoder = prompt_encoder
        self.mask_decoder = mask_decoder

    @property
    def img_size(self) -> int:
        return self.image_encoder.img_size

    @property
    def low_res_size(self) -> tuple[int, int]:
        return self.prompt_encoder.mask_input_size

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) -> (B, C, S/4 or S/16, ...) embeddings."""
        return self.image_encoder(images)

    def decode(
        self,
        image_embedding: torch.Tensor,
        point_coords: torch.Tensor | None = None,
        point_labels: torch.Tensor | None = None,
        boxes: torch.Tensor | None = None,
        mask_input: torch.Tensor | None = None,
        multimask_output: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Points (B, N, 2) as (x, y) input pixels, boxes (B, 4) as x0, y0, x1, y1 -> low-res logits
        (B, M, S/4, S/4) and IoU (B, M)."""
        points = None if point_coords is None else (point_coords, point_labels)
        sparse, dense = self.prompt_encoder(points, boxes, mask_input)
        return self.mask_decoder(image_embedding, self.prompt_encoder.get_dense_pe(), sparse, dense, multimask_output)
