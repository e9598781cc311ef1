"""napari plugin (npe2): the FastSAM3D dock widget. Install with ``pip install "fastsam3d[napari]"``."""

from .widget import FastSAM3DWidget

__all__ = ["FastSAM3DWidget"]
