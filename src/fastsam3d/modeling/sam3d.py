"""The 3D SAM (SAM-Med3D, FastSAM3D) and its architecture config; keys as in SAM-Med3D's ``Sam3D``."""

from __future__ import annotations

from ..configs import TARGET_SPACING_MM, Sam3DConfig
from .image_encoder import ImageEncoderViT3D
from .mask_decoder import MaskDecoder
from .prompt_encoder import PromptEncoder
from .sam import Sam


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
