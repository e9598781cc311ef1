"""fastsam3d: fast interactive segmentation of 3D medical images with segment-anything models."""

__version__ = "0.1.0"
