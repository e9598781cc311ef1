"""PyTorch modules of the 3D segment-anything models: maths only, no I/O."""

from .image_encoder import Block3D, ImageEncoderViT3D
from .mask_decoder import MaskDecoder3D
from .prompt_encoder import PromptEncoder3D
from .sam3d import Sam3D

__all__ = ["Block3D", "ImageEncoderViT3D", "MaskDecoder3D", "PromptEncoder3D", "Sam3D"]
