"""fastsam3d: fast interactive segmentation of 3D medical images with segment-anything models.

    import fastsam3d
    session = fastsam3d.Session("default")
    session.set_image("ct.nii.gz")
    session.add_click((120, 200, 45))
    session.save_labels("seg.nii.gz")
"""

from .errors import CheckpointError, FastSAM3DError, PromptError, VolumeError
from .io import Volume, read_volume, write_volume
from .registry import MODEL_CONFIGS, ModelConfig, build_model, load_model, save_model
from .session import Session

__version__ = "0.1.0"

__all__ = [
    "MODEL_CONFIGS",
    "CheckpointError",
    "FastSAM3DError",
    "ModelConfig",
    "PromptError",
    "Session",
    "Volume",
    "VolumeError",
    "build_model",
    "load_model",
    "read_volume",
    "save_model",
    "write_volume",
]
