"""Reading checkpoints: official ``.pth`` files (without arbitrary unpickling) and our
safetensors (weights + config), the architecture of a state dict read from its keys, and a strict
load whose error names what differs and the likely cause."""

from __future__ import annotations

import argparse
import ctypes
import json
import mmap
import re
from dataclasses import fields
from pathlib import Path

import torch

from .errors import CheckpointError
from .modeling.click_unet import ClickUNetConfig
from .modeling.sam3d import Sam3DConfig

CONFIG_METADATA_KEY = "fastsam3d_config"
_STORED_CONFIGS = {"click-unet": ClickUNetConfig, None: Sam3DConfig}  # by the stored "kind"


def config_from_json(text: str) -> Sam3DConfig | ClickUNetConfig:
    """A config stored by :func:`fastsam3d.registry.save_model` (a 3D SAM's, or a ClickUNet's
    with ``kind``)."""
    data = json.loads(text)
    config_class = _STORED_CONFIGS.get(data.get("kind"))
    if config_class is None:
        raise CheckpointError(f"model config of unknown kind {data.get('kind')!r}: written by a newer fastsam3d?")
    unknown = set(data) - {f.name for f in fields(config_class)}
    if unknown:
        raise CheckpointError(f"model config has unknown fields {sorted(unknown)}: written by a newer fastsam3d?")
    return config_class(**{key: tuple(v) if isinstance(v, list) else v for key, v in data.items()})


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
    if (
        head[:2] == b"\x1f\x8b"
        or head[344:348] in (b"n+1\0", b"ni1\0")
        or head[:4] in (b"\x5c\x01\0\0", b"\0\0\x01\x5c")
    ):
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


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], Sam3DConfig | ClickUNetConfig | None]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            mapped = _mapped_ranges(path)
            state_dict = {key: _out_of_mapping(handle.get_tensor(key), mapped) for key in handle.keys()}  # noqa: SIM118 - safe_open is not a dict
    except FileNotFoundError:
        raise CheckpointError(f"no such checkpoint: {path}") from None
    except (SafetensorError, OSError, ValueError) as error:
        raise CheckpointError(f"cannot read {path}: not a valid safetensors file ({error})") from None
    config = config_from_json(metadata[CONFIG_METADATA_KEY]) if CONFIG_METADATA_KEY in metadata else None
    return state_dict, config


_LIBC = ctypes.CDLL(None) if hasattr(mmap, "MADV_DONTNEED") else None  # the C library, for madvise (Linux)


def _mapped_ranges(path: Path) -> list[tuple[int, int]]:
    """Address ranges where this process maps the file ``path`` (Linux's ``/proc/self/maps``; none elsewhere)."""
    try:
        lines = Path("/proc/self/maps").read_text().splitlines()
    except OSError:
        return []
    target, ranges = str(Path(path).resolve()), []
    for line in lines:
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and fields[5] == target:
            low, high = fields[0].split("-")
            ranges.append((int(low, 16), int(high, 16)))
    return ranges


def _out_of_mapping(tensor: torch.Tensor, mapped: list[tuple[int, int]]) -> torch.Tensor:
    """A copy in memory of a tensor that safetensors may map from its file; where it lies in the
    file's ``mapped`` ranges, its pages then leave this process (they would otherwise stay resident
    beside the copy until the file is closed: a FastSAM3D student, 213 MB, counted twice)."""
    copy = tensor.clone()
    start, end = tensor.data_ptr(), tensor.data_ptr() + tensor.nbytes
    if _LIBC is not None and any(low <= start and end <= high for low, high in mapped):
        first = -(-start // mmap.PAGESIZE) * mmap.PAGESIZE  # whole pages inside the tensor only
        last = end // mmap.PAGESIZE * mmap.PAGESIZE
        if last > first:
            _LIBC.madvise(ctypes.c_void_p(first), ctypes.c_size_t(last - first), mmap.MADV_DONTNEED)
    return copy


def infer_config(state_dict: dict[str, torch.Tensor], block_style: str | None = None) -> Sam3DConfig:
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
    return Sam3DConfig(
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


def _describe(config: Sam3DConfig | ClickUNetConfig) -> str:
    if isinstance(config, ClickUNetConfig):
        return f"a click-conditioned 3D U-Net (channels {'-'.join(map(str, config.channels))}), not a 3D SAM"
    attention = config.depth - config.skip_layer
    return f"{config.depth} encoder blocks ({config.skip_layer} MLP-only, {attention} with attention), width {config.embed_dim}"


def load_state_dict_strict(
    model: torch.nn.Module, state_dict: dict[str, torch.Tensor], source: str, assign: bool = False
) -> None:
    """Load with a strict key and shape check; the error names what differs and the likely cause.

    ``assign``: the model takes the state dict's tensors themselves (cast to the model's dtypes
    where they differ) instead of copying them into its own: for a model built without
    initialisation (``registry.load_model``).
    """
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
        name = config.name if config is not None else type(model).__name__
        encoder_differs = any(k.startswith("image_encoder.") for k in missing + unexpected)
        if (
            config is not None
            and config.spatial_dims == 3
            and encoder_differs
            and "image_encoder.pos_embed" in state_dict
        ):
            cause = f"; the checkpoint has {_describe(infer_config(state_dict))}, the model {_describe(config)}"
        elif "image_encoder.pos_embed" not in state_dict and "pos_embed" in state_dict:
            cause = "; this looks like an encoder-only student checkpoint: pass decoder_checkpoint= as well"
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong_shape)):
            if keys:
                parts.append(f"{len(keys)} {label} (e.g. {', '.join(keys[:3])})")
        raise CheckpointError(f"{source} does not fit model {name!r}: {'; '.join(parts)}{cause}")
    if assign:  # a half-precision checkpoint still gives a float32 model, a transposed view a contiguous one
        state_dict = _owned(state_dict, {k: v.dtype for k, v in expected.items()})
    model.load_state_dict(state_dict, strict=True, assign=assign)


def _owned(state_dict: dict[str, torch.Tensor], dtypes: dict[str, torch.dtype]) -> dict[str, torch.Tensor]:
    """The tensors a model can take as its own: in its dtypes, contiguous, and no two of them the same
    memory (a checkpoint may hold one tensor under several keys; as parameters they would be tied)."""
    owned, starts = {}, set()
    for key, value in state_dict.items():
        value = value.to(dtypes[key]).contiguous()
        if value.numel() and value.data_ptr() in starts:
            value = value.clone()
        starts.add(value.data_ptr())
        owned[key] = value
    return owned


def read_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], Sam3DConfig | ClickUNetConfig | None]:
    """State dict (and config, for our safetensors files) of a checkpoint file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no such checkpoint: {path}")
    if path.suffix == ".safetensors":
        return _read_safetensors(path)
    return _read_torch_checkpoint(path), None
