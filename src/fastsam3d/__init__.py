"""fastsam3d: fast interactive segmentation of 3D medical images with segment-anything models.

import fastsam3d
session = fastsam3d.Session("default")
session.set_image("ct.nii.gz")
session.add_click((120, 200, 45))
session.save_labels("seg.nii.gz")
"""

from .errors import CheckpointError, FastSAM3DError, PromptError, VolumeError
from .lazy import lazy_attributes

__version__ = "0.1.0"

# The rest imports torch (seconds on a busy CPU): loaded on first use, so `fastsam3d weights list` and
# `--version` answer at once.
_LAZY = {
    "Volume": "io",
    "read_volume": "io",
    "write_volume": "io",
    "MODEL_CONFIGS": "registry",
    "build_model": "registry",
    "load_model": "registry",
    "save_model": "registry",
    "Sam3DConfig": "modeling",
    "Sam2DConfig": "modeling",
    "Session": "engine",
    "SliceSession": "engine",
    "open_session": "engine",
}


__getattr__ = lazy_attributes(__name__, _LAZY, globals())


__all__ = [
    "MODEL_CONFIGS",
    "CheckpointError",
    "FastSAM3DError",
    "PromptError",
    "Sam2DConfig",
    "Sam3DConfig",
    "Session",
    "SliceSession",
    "Volume",
    "VolumeError",
    "build_model",
    "load_model",
    "open_session",
    "read_volume",
    "save_model",
    "write_volume",
]
