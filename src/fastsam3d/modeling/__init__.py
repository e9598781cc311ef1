"""PyTorch modules of the segment-anything models (2D and 3D) and the click U-Net: maths only, no I/O."""

from .image_encoder import Block3D, ImageEncoderViT3D
from .mask_decoder import MaskDecoder
from .prompt_encoder import PromptEncoder
from .sam import Sam
from .sam2d import Sam2D, Sam2DConfig
from .sam3d import Sam3D, Sam3DConfig

__all__ = [
    "Block3D",
    "ImageEncoderViT3D",
    "MaskDecoder",
    "PromptEncoder",
    "Sam",
    "Sam2D",
    "Sam2DConfig",
    "Sam3D",
    "Sam3DConfig",
]
