"""Geometry between fastsam3d volumes and napari layers: every coordinate conversion of the plugin.

napari world frame used here: axes (z, y, x) of LPS millimetres, so napari's default 2D view (the
last two axes on screen, the first on the slider) is an axial view in the radiological convention:
anterior at the top, the patient's left on the right of the screen, superior on the slider.

A volume read by the plugin is shown as its array transposed to (k, j, i) (a view, no copy) with the
4x4 affine from those data axes to that world frame (spacing, direction and origin), so napari draws
it where it lies, oblique or not. Any other image layer is used as napari sees it: its data axes are
the session's voxel axes and its full transform (scale, translate, rotate, shear, affine) gives the
geometry. ``world_to_index`` and ``index_to_world`` go through napari's own transform of the layer.
"""

from __future__ import annotations

import numpy as np

from ..io import Volume

VOLUME_KEY = "fastsam3d_volume"  # layer metadata: the Volume in session voxel order (i, j, k)
AXES_KEY = "fastsam3d_axes"  # layer metadata: data axis order relative to the session's (i, j, k)
REVERSE = np.eye(3)[::-1]  # LPS (x, y, z) <-> napari world (z, y, x)

# (level, width) window presets; "CT soft tissue" is chosen for a CT (intensities down to air)
WINDOWS = {"CT soft tissue": (40, 400), "CT lung": (-600, 1500), "CT bone": (400, 1800), "CT brain": (40, 80)}


def image_layer_data(volume: Volume, name: str) -> tuple[np.ndarray, dict]:
    """The (data, kwargs) of an image layer showing ``volume``: a (k, j, i) view and its affine."""
    affine = np.eye(4)
    affine[:3, :3] = REVERSE @ (volume.direction * volume.spacing) @ REVERSE  # (k, j, i) -> (z, y, x)
    affine[:3, 3] = REVERSE @ volume.origin
    kwargs = {"name": name, "affine": affine, "colormap": "gray", "contrast_limits": default_limits(volume.array),
              "metadata": {VOLUME_KEY: volume, AXES_KEY: (2, 1, 0)}}
    return volume.array.transpose(2, 1, 0), kwargs


def is_ct(array: np.ndarray) -> bool:
    """CT in Hounsfield units: reaches air (about -1000 HU); MR intensities do not go that low."""
    return float(np.min(array)) <= -500


def default_limits(array: np.ndarray) -> tuple[float, float]:
    """Contrast limits when a volume opens: the soft-tissue window for a CT, else its 0.5-99.5 percentiles."""
    if is_ct(array):
        return window_limits("CT soft tissue")
    sample = np.asarray(array).ravel()[:: max(1, np.asarray(array).size // 1_000_000)]
    low, high = np.percentile(sample, [0.5, 99.5])
    return float(low), float(max(high, low + 1e-6))


def window_limits(name: str) -> tuple[float, float]:
    level, width = WINDOWS[name]
    return level - width / 2, level + width / 2


def layer_axes(layer) -> tuple[int, int, int]:
    return tuple(layer.metadata.get(AXES_KEY, (0, 1, 2)))


def layer_volume(layer) -> Volume:
    """The volume a session works on for an image layer (session voxel order, LPS geometry)."""
    volume = layer.metadata.get(VOLUME_KEY)
    if volume is not None:
        return volume
    data = np.asarray(layer.data)
    if data.ndim != 3:
        raise ValueError(f"a 3D image layer is needed, {layer.name!r} has {data.ndim} dimensions")
    origin = np.asarray(layer.data_to_world(np.zeros(3)), dtype=float)
    linear = np.stack([np.asarray(layer.data_to_world(np.eye(3)[axis]), dtype=float) - origin for axis in range(3)], 1)
    linear = REVERSE @ linear  # napari world (z, y, x) -> LPS
    spacing = np.linalg.norm(linear, axis=0)
    return Volume(data, spacing, REVERSE @ origin, linear / spacing)


def world_to_index(layer, world) -> np.ndarray:
    """napari world coordinates (z, y, x) -> continuous session voxel index (i, j, k) of the layer's volume."""
    data = np.asarray(layer.world_to_data(np.asarray(world, dtype=float)[-3:]), dtype=float)
    index = np.empty(3)
    index[list(layer_axes(layer))] = data
    return index


def index_to_world(layer, index) -> np.ndarray:
    """Session voxel index (i, j, k) -> napari world coordinates of the layer."""
    index = np.asarray(index, dtype=float)
    data = index[list(layer_axes(layer))]
    return np.asarray(layer.data_to_world(data), dtype=float)


def layer_transform(layer) -> dict:
    """Keyword arguments that give another layer (labels, uncertainty) the same transform as ``layer``."""
    return {"scale": layer.scale, "translate": layer.translate, "rotate": layer.rotate, "shear": layer.shear,
            "affine": layer.affine.affine_matrix}


def session_view(array: np.ndarray, layer) -> np.ndarray:
    """A session array (i, j, k) seen in the layer's data order (a view: updates show after a refresh)."""
    return array.transpose(layer_axes(layer))
