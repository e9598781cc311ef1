"""The 3D SAM (SAM-Med3D, FastSAM3D) and its architecture config; keys as in SAM-Med3D's ``Sam3D``."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import ClassVar

from ..preprocess import TARGET_SPACING_MM
from .image_encoder import ImageEncoderViT3D
from .mask_decoder import MaskDecoder
from .prompt_encoder import PromptEncoder
from .sam import Sam


@dataclass(frozen=True)
class Sam3DConfig:
    """Every architecture number of a 3D SAM. Defaults are SAM-Med3D's ViT-B teacher."""

    spatial_dims: ClassVar[int] = 3

    name: str = "sam-med3d"
    description: str = ""
    img_size: int = 128
    patch_size: int = 16
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    window_size: int = 14
    global_attn_indexes: tuple[int, ...] = (2, 5, 8, 11)
    skip_layer: int = 0
    block_style: str = "prenorm"
    attention_mode: str = "global"
    dilation: int = 2
    prompt_dim: int = 384
    mask_in_chans: int = 16
    box_embeddings: bool = False
    num_multimask_outputs: int = 3
    iou_head_depth: int = 3
    iou_head_hidden_dim: int = 256
    decoder_depth: int = 2
    decoder_heads: int = 8
    decoder_mlp_dim: int = 2048
    cluster_after: int | None = None  # 3D token clustering after this encoder block (Fast 3D SAM)
    weights: str = field(default="", compare=False)  # file name under the package's weights folder, if shipped

    @property
    def grid_size(self) -> int:
        return self.img_size // self.patch_size

    def to_json(self) -> str:
        return json.dumps(asdict(self))


class Sam3D(Sam):
    """A 3D SAM on 128³ crops at 1.5 mm; ``config`` is the architecture it was built from."""

    config: Sam3DConfig | None = None

    @classmethod
    def from_config(cls, config: Sam3DConfig) -> Sam3D:
        """An untrained model of this architecture, in eval mode."""
        encoder = ImageEncoderViT3D(
            img_size=config.img_size,
            patch_size=config.patch_size,
            embed_dim=config.embed_dim,
            depth=config.depth,
            num_heads=config.num_heads,
            mlp_ratio=config.mlp_ratio,
            out_chans=config.prompt_dim,
            window_size=config.window_size,
            global_attn_indexes=config.global_attn_indexes,
            skip_layer=config.skip_layer,
            block_style=config.block_style,
            attention_mode=config.attention_mode,
            dilation=config.dilation,
        )
        if config.cluster_after is not None:
            encoder.enable_token_clustering(config.cluster_after)
        prompt_encoder = PromptEncoder(
            config.prompt_dim,
            (config.grid_size,) * 3,
            (config.img_size,) * 3,
            config.mask_in_chans,
            config.box_embeddings,
        )
        decoder = MaskDecoder(
            config.prompt_dim,
            config.num_multimask_outputs,
            config.iou_head_depth,
            config.iou_head_hidden_dim,
            config.decoder_depth,
            config.decoder_heads,
            config.decoder_mlp_dim,
        )
        model = cls(encoder, prompt_encoder, decoder)
        model.config = config
        return model.eval()

    @property
    def roi_spacing(self) -> float:
        """Millimetres per crop voxel (the models were trained at 1.5 mm)."""
        return TARGET_SPACING_MM

    @property
    def roi_spacings(self) -> tuple[float, ...]:
        """One zoom level: the training spacing."""
        return (TARGET_SPACING_MM,)

    @property
    def roi_padding(self) -> str:
        """What the crop holds where it leaves the volume: zeros, as in training (torchio CropOrPad)."""
        return "zero"
