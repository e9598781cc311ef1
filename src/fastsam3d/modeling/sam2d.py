"""A 2D SAM (SAM, MedSAM, LiteMedSAM, SAM-Med2D) and its config; keys as in ``segment_anything``'s ``Sam``."""

from __future__ import annotations

from ..configs import Sam2DConfig
from .image_encoder2d import ImageEncoderViT2D
from .mask_decoder import MaskDecoder
from .prompt_encoder import PromptEncoder
from .sam import Sam
from .tiny_vit import TinyViT

PROMPT_DIM = 256


class Sam2D(Sam):
    """``encode`` takes (B, 3, S, S) images already scaled as ``config`` says; ``decode`` takes
    points (B, N, 2) as (x, y) input pixels and boxes (B, 4) as x0, y0, x1, y1."""

    config: Sam2DConfig | None = None

    @classmethod
    def from_config(cls, config: Sam2DConfig) -> Sam2D:
        """An untrained model of this architecture, in eval mode."""
        if config.encoder == "tiny-vit":
            encoder = TinyViT(img_size=config.img_size)
        else:
            encoder = ImageEncoderViT2D(img_size=config.img_size, adapters=config.encoder == "vit-b-adapter")
        grid = (config.grid_size,) * 2
        model = cls(
            encoder, PromptEncoder(PROMPT_DIM, grid, (config.img_size,) * 2), MaskDecoder(PROMPT_DIM, spatial_dims=2)
        )
        model.config = config
        return model.eval()
