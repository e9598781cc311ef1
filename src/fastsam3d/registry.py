"""Named model configs, builders, and checkpoint loading (official ``.pth`` files and our safetensors).

    model = load_model("fastsam3d", checkpoint="FastSAM3D.pth")   # official full checkpoint
    model = load_model("path/to/model.safetensors")                 # config travels in the file
    model = load_model("default")                                   # the weights shipped with the package
"""

from __future__ import annotations

import argparse
import json
import re
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import torch

from .errors import CheckpointError
from .io import atomic_output
from .modeling import ImageEncoderViT3D, MaskDecoder3D, PromptEncoder3D, Sam3D
from .modeling.click_unet import ClickUNet3D, ClickUNetConfig
from .modeling.precision import apply_model_precision

WEIGHTS_DIR = Path(__file__).parent / "weights"
CONFIG_METADATA_KEY = "fastsam3d_config"


@dataclass(frozen=True)
class ModelConfig:
    """Every architecture number of a 3D SAM. Defaults are SAM-Med3D's ViT-B teacher."""

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
    weights: str = field(default="", compare=False)  # file name under WEIGHTS_DIR, if shipped

    @property
    def grid_size(self) -> int:
        return self.img_size // self.patch_size

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "ModelConfig | ClickUNetConfig":
        """A config stored by :func:`save_model` (a 3D SAM's, or a ClickUNet's with ``kind``)."""
        data = json.loads(text)
        config_class = ClickUNetConfig if data.get("kind") == "click-unet" else cls
        known = {f.name for f in fields(config_class)}
        unknown = set(data) - known
        if unknown:
            raise CheckpointError(f"model config has unknown fields {sorted(unknown)}: written by a newer fastsam3d?")
        for key, value in data.items():
            if isinstance(value, list):
                data[key] = tuple(value)
        return config_class(**data)


MODEL_CONFIGS: dict[str, ModelConfig | ClickUNetConfig] = {}


def register_config(config: ModelConfig | ClickUNetConfig) -> ModelConfig | ClickUNetConfig:
    MODEL_CONFIGS[config.name] = config
    return config


SAM_MED3D = register_config(
    ModelConfig(name="sam-med3d", description="SAM-Med3D ViT-B teacher (12 blocks, pre-norm), sam_med3d.pth")
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
    ModelConfig(
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
    ModelConfig(
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
        description="the model shipped with fastsam3d: a click-conditioned 3D U-Net (64³ ROI at 3 mm), see weights/MODEL_CARD.md",
        weights="default.safetensors",
    )
)
register_config(ClickUNetConfig(name="click-unet", description="the architecture of the shipped default, untrained"))
TINY = register_config(
    ModelConfig(
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
    )
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
    )
)


def build_model(config: ModelConfig | ClickUNetConfig | str) -> Sam3D | ClickUNet3D:
    """Build an untrained model of a named or given config."""
    if isinstance(config, str):
        config = get_config(config)
    if isinstance(config, ClickUNetConfig):
        return ClickUNet3D(config).eval()
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
    grid = (config.grid_size,) * 3
    prompt_encoder = PromptEncoder3D(
        config.prompt_dim, grid, (config.img_size,) * 3, config.mask_in_chans, config.box_embeddings
    )
    decoder = MaskDecoder3D(
        config.prompt_dim,
        config.num_multimask_outputs,
        config.iou_head_depth,
        config.iou_head_hidden_dim,
        config.decoder_depth,
        config.decoder_heads,
        config.decoder_mlp_dim,
    )
    if config.cluster_after is not None:
        encoder.enable_token_clustering(config.cluster_after)
    model = Sam3D(encoder, prompt_encoder, decoder)
    model.config = config
    return model.eval()


def get_config(name: str) -> ModelConfig:
    try:
        return MODEL_CONFIGS[name]
    except KeyError:
        raise CheckpointError(f"unknown model {name!r}; known models: {', '.join(all_model_names())}") from None


def all_model_names() -> list[str]:
    """Every name ``--model`` takes: 3D configs, official downloads (e.g. fastsam3d-encoder) and 2D models."""
    from .hub import CATALOGUE
    from .registry2d import MODEL_2D_CONFIGS

    return sorted({*MODEL_CONFIGS, *(n for n, e in CATALOGUE.items() if e.runnable), *MODEL_2D_CONFIGS})


# --- reading checkpoints ---------------------------------------------------------------


def _read_torch_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """The state dict of an official ``.pth`` file, read without arbitrary unpickling."""
    _check_torch_file(path)
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"no such checkpoint: {path}") from None
    except Exception as error:  # noqa: BLE001 - any unpickling failure becomes one clear message
        text = str(error).strip()
        if "Weights only load failed" in text or "Unsupported global" in text:
            found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
            raise CheckpointError(
                f"{path} holds Python objects besides weights{f' ({found.group(1)})' if found else ''}, which fastsam3d "
                "does not unpickle: save its state dict (torch.save(model.state_dict(), ...)) or use the official file"
            ) from None
        first_line = text.splitlines()[0] if text else type(error).__name__
        raise CheckpointError(f"cannot read checkpoint {path}: {first_line}") from None
    for key in ("model_state_dict", "state_dict", "model"):  # FastSAM3D/SAM-Med3D, generic, SAM-Med2D
        if isinstance(checkpoint, dict) and isinstance(checkpoint.get(key), dict):
            checkpoint = checkpoint[key]
            break
    if not isinstance(checkpoint, dict) or not all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        raise CheckpointError(f"{path} holds no model state dict (expected tensors, or them under 'model_state_dict')")
    return {key.removeprefix("module."): value for key, value in checkpoint.items()}


def _check_torch_file(path: Path) -> None:
    """Refuse early, in words, a file that is not a torch checkpoint (torch's own message is cryptic)."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(352)
    except FileNotFoundError:
        raise CheckpointError(f"no such checkpoint: {path}") from None
    except OSError as error:
        raise CheckpointError(f"cannot read checkpoint {path}: {error.strerror}") from None
    if head.startswith(b"PK\x03\x04") or head[:1] == b"\x80":  # torch zip archive, or a legacy pickle
        return
    if head[:2] == b"\x1f\x8b" or head[344:348] in (b"n+1\0", b"ni1\0") or head[:4] in (b"\x5c\x01\0\0", b"\0\0\x01\x5c"):
        what = "an image (NIfTI / gzip)"
    elif head.startswith(b"NRRD") or b"ObjectType" in head[:64]:
        what = "an image (NRRD / MetaImage)"
    elif head and all(32 <= b < 127 or b in (9, 10, 13) for b in head[:64]):
        what = "a text file"
    else:
        what = "a binary file of another kind"
    raise CheckpointError(
        f"{path} is {what}, not a model checkpoint: give the weights file (.pth from the publisher, or a "
        "fastsam3d .safetensors), e.g. `fastsam3d weights path sam-med3d-turbo`"
    )


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], ModelConfig | None]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            state_dict = {key: handle.get_tensor(key) for key in handle.keys()}
    except FileNotFoundError:
        raise CheckpointError(f"no such checkpoint: {path}") from None
    except (SafetensorError, OSError, ValueError) as error:
        raise CheckpointError(f"cannot read {path}: not a valid safetensors file ({error})") from None
    config = ModelConfig.from_json(metadata[CONFIG_METADATA_KEY]) if CONFIG_METADATA_KEY in metadata else None
    return state_dict, config


def infer_config(state_dict: dict[str, torch.Tensor], block_style: str | None = None) -> ModelConfig:
    """Read the architecture of a full 3D SAM state dict from its key names and shapes."""
    try:
        pos_embed = state_dict["image_encoder.pos_embed"]
        patch = state_dict["image_encoder.patch_embed.proj.weight"]
        prompt_dim = state_dict["image_encoder.neck.0.weight"].shape[0]
        mask_in_chans = state_dict["prompt_encoder.mask_downscaling.3.weight"].shape[0]
    except KeyError as missing:
        raise CheckpointError(f"not a 3D SAM checkpoint: key {missing} is missing") from None
    blocks = sorted({int(m.group(1)) for k in state_dict if (m := re.match(r"image_encoder\.blocks\.(\d+)\.", k))})
    depth = len(blocks)
    grid, embed_dim, patch_size = pos_embed.shape[1], pos_embed.shape[-1], patch.shape[-1]
    with_attention = [f"image_encoder.blocks.{i}.attn.qkv.weight" in state_dict for i in blocks]
    skip_layer = with_attention.index(True) if True in with_attention else depth
    head_dim = next(
        (state_dict[f"image_encoder.blocks.{i}.attn.rel_pos_d"].shape[1] for i in blocks if with_attention[i]),
        embed_dim // 12,
    )
    windowed, window = [], 0
    for i in blocks:
        key = f"image_encoder.blocks.{i}.attn.rel_pos_d"
        if key in state_dict and state_dict[key].shape[0] != 2 * grid - 1:
            windowed.append(i)
            window = (state_dict[key].shape[0] + 1) // 2
    is_student = skip_layer > 0
    return ModelConfig(
        name="checkpoint",
        img_size=grid * patch_size,
        patch_size=patch_size,
        embed_dim=embed_dim,
        depth=depth,
        num_heads=embed_dim // head_dim,
        window_size=window,
        global_attn_indexes=tuple(i for i in blocks if i not in windowed) if window else (),
        skip_layer=skip_layer,
        block_style=block_style or ("fastsam3d" if is_student else "prenorm"),
        prompt_dim=prompt_dim,
        mask_in_chans=mask_in_chans,
        box_embeddings="prompt_encoder.point_embeddings.3.weight" in state_dict,
        num_multimask_outputs=state_dict["mask_decoder.mask_tokens.weight"].shape[0] - 1,
        decoder_mlp_dim=state_dict["mask_decoder.transformer.layers.0.mlp.lin1.weight"].shape[0],
    )


def _describe(config: ModelConfig | ClickUNetConfig) -> str:
    if isinstance(config, ClickUNetConfig):
        return f"a click-conditioned 3D U-Net (channels {'-'.join(map(str, config.channels))}), not a 3D SAM"
    attention = config.depth - config.skip_layer
    return f"{config.depth} encoder blocks ({config.skip_layer} MLP-only, {attention} with attention), width {config.embed_dim}"


def load_state_dict_strict(model: torch.nn.Module, state_dict: dict[str, torch.Tensor], source: str) -> None:
    """Load with a strict key and shape check; the error names what differs and the likely cause."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    wrong_shape = [
        f"{k} {tuple(state_dict[k].shape)} != {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state_dict and state_dict[k].shape != v.shape
    ]
    if missing or unexpected or wrong_shape:
        cause = ""
        config = getattr(model, "config", None)
        name = config.name if config is not None else getattr(model, "name", type(model).__name__)
        if config is None:
            pass
        elif any(k.startswith("image_encoder.") for k in missing + unexpected) and "image_encoder.pos_embed" in state_dict:
            cause = f"; the checkpoint has {_describe(infer_config(state_dict))}, the model {_describe(model.config)}"
        elif "image_encoder.pos_embed" not in state_dict and "pos_embed" in state_dict:
            cause = "; this looks like an encoder-only student checkpoint: pass decoder_checkpoint= as well"
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong_shape)):
            if keys:
                parts.append(f"{len(keys)} {label} (e.g. {', '.join(keys[:3])})")
        raise CheckpointError(f"{source} does not fit model {name!r}: {'; '.join(parts)}{cause}")
    model.load_state_dict(state_dict, strict=True)


def read_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], ModelConfig | None]:
    """State dict (and config, for our safetensors files) of a checkpoint file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no such checkpoint: {path}")
    if path.suffix == ".safetensors":
        return _read_safetensors(path)
    return _read_torch_checkpoint(path), None


def load_model(
    model: str | Path = "default",
    checkpoint: str | Path | None = None,
    decoder_checkpoint: str | Path | None = None,
    block_style: str | None = None,
    device: str | torch.device = "cpu",
    precision: str = "fp32",
) -> Sam3D | ClickUNet3D:
    """Build a model and load its weights.

    Args:
        model: a registered name (``fastsam3d``, ``sam-med3d-turbo``, ``default``, ...) or a
            checkpoint path (``.safetensors`` written by :func:`save_model`, or an official ``.pth``
            whose architecture is read from its keys).
        checkpoint: weights for a named model; defaults to the file shipped for that name.
        decoder_checkpoint: for an encoder-only FastSAM3D student checkpoint (keys without the
            ``image_encoder.`` prefix), a full checkpoint to take the prompt encoder and decoder from.
        block_style: override the residual form ("prenorm" or "fastsam3d"), see REFERENCE.md fact 2.
        precision: ``"fp32"`` (trainable), ``"int8"``, ``"bf16"`` or ``"auto"`` (the fastest that keeps
            the masks on ``device``), see :mod:`fastsam3d.modeling.precision`.
    """
    config: ModelConfig | None
    if isinstance(model, str) and checkpoint is None:
        from .hub import resolve_for_model  # official checkpoints by name: cache, else download once

        if official := resolve_for_model(model):
            model, checkpoint, decoder_checkpoint = official[0], official[1], decoder_checkpoint or official[2]
    if isinstance(model, str) and model in MODEL_CONFIGS and checkpoint is None:
        config = MODEL_CONFIGS[model]
        if not config.weights:
            raise CheckpointError(
                f"no weights ship for {model!r}: pass the official checkpoint file, e.g. "
                f"`--model {model} --checkpoint FILE.pth` / load_model({model!r}, checkpoint=...)"
            )
        checkpoint = WEIGHTS_DIR / config.weights
        if not checkpoint.is_file():
            raise CheckpointError(f"the weights of {model!r} are missing from the installation ({checkpoint})")
    elif isinstance(model, str) and model in MODEL_CONFIGS:
        config = MODEL_CONFIGS[model]
    elif Path(model).suffix in (".pth", ".pt", ".safetensors", ".ckpt"):
        checkpoint, config = Path(model), None
    else:
        raise CheckpointError(f"unknown model {str(model)!r}: give one of {', '.join(all_model_names())} or a checkpoint file")
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
    if block_style is not None and isinstance(config, ModelConfig):
        config = replace(config, block_style=block_style)
    built = build_model(config)
    load_state_dict_strict(built, state_dict, str(checkpoint))
    del state_dict
    return apply_model_precision(built.to(device), precision, device)


def save_model(model: Sam3D | ClickUNet3D, path: str | Path, half: bool = False) -> Path:
    """Write weights + config as safetensors, atomically (temp file + rename)."""
    from safetensors.torch import save

    if getattr(model, "precision", "fp32") != "fp32":  # int8 layers keep their weights outside the state dict
        raise CheckpointError(f"the model runs in {model.precision}; save it from an fp32 load (precision='fp32')")
    path = Path(path)
    state = {k: (v.half() if half and v.is_floating_point() else v).contiguous() for k, v in model.state_dict().items()}
    with atomic_output(path) as temp:  # written by Python: the umask's permissions (safetensors' own writer uses 0600)
        temp.write_bytes(save(state, metadata={CONFIG_METADATA_KEY: model.config.to_json()}))
    return path
