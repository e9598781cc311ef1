"""Geometry between fastsam3d volumes and napari layers: every coordinate conversion of the plugin.

napari world frame used here: axes (z, y, x) of LPS millimetres, so napari's default 2D view (the
last two axes on screen, the first on the slider) is an axial view in the radiological convention:
anterior at the top, the patient's left on the right of the screen, superior on the slider.

A volume read by the plugin is shown as a view of its array with the voxel axes permuted and
flipped to the closest of those world axes (as NiiVue and ITK-SNAP show volumes: no resampling),
placed by its spacing and origin. For an axis-aligned volume (any orientation) that is its exact
affine; an oblique one is shown without its obliquity, because napari draws 2D slices of a layer
rotated out of the slice plane without that rotation (its "non-orthogonal slicing"), so clicks
would land on other voxels than the ones drawn. The true geometry stays with the volume (export).
Any other image layer is used as napari sees it: its data axes are the session's voxel axes and its
full transform (scale, translate, rotate, shear, affine) gives the geometry. ``world_to_index`` and
``index_to_world`` go through napari's own transform of the layer, so a click lands on the voxel
napari draws there.
"""

from __future__ import annotations

import numpy as np

from ..io import Volume, is_ct

VOLUME_KEY = "fastsam3d_volume"  # layer metadata: the Volume in session voxel order (i, j, k)
AXES_KEY = "fastsam3d_axes"  # layer metadata: the session axis (i, j, k) shown as each data axis
FLIPS_KEY = "fastsam3d_flips"  # layer metadata: data axes that run backwards along their session axis
REVERSE = np.eye(3)[::-1]  # LPS (x, y, z) <-> napari world (z, y, x)

# (level, width) window presets; "CT soft tissue" is chosen for a CT (intensities down to air)
WINDOWS = {"CT soft tissue": (40, 400), "CT lung": (-600, 1500), "CT bone": (400, 1800), "CT brain": (40, 80)}


def image_layer_data(volume: Volume, name: str) -> tuple[np.ndarray, dict]:
    """The (data, kwargs) of an image layer showing ``volume`` (a view of its array, see the module docstring)."""
    linear = REVERSE @ (volume.direction * volume.spacing)  # session axis (column) -> world (z, y, x)
    axes = closest_axes(volume.direction)
    flips = tuple(bool(linear[w, axes[w]] < 0) for w in range(3))
    view = volume.array.transpose(axes)[tuple(slice(None, None, -1) if f else slice(None) for f in flips)]
    corner = np.array([volume.shape[axes[w]] - 1 if flips[w] else 0 for w in range(3)], float)
    first = np.empty(3)
    first[list(axes)] = corner  # the session index of data voxel (0, 0, 0)
    kwargs = {
        "name": name,
        "scale": volume.spacing[list(axes)],
        "translate": REVERSE @ volume.index_to_world(first),
        "colormap": "gray",
        "contrast_limits": default_limits(volume.array),
        "metadata": {VOLUME_KEY: volume, AXES_KEY: axes, FLIPS_KEY: flips},
    }
    return view, kwargs


def closest_axes(direction: np.ndarray) -> tuple[int, int, int]:
    """For napari world axes (z, y, x) = LPS (2, 1, 0): the session axis closest to each."""
    weights = np.abs(np.asarray(direction))[::-1]  # rows: world z, y, x
    axes: list[int] = [-1, -1, -1]
    for _ in range(3):  # greedy on the largest remaining cosine: always a permutation
        masked = weights.copy()
        masked[[w for w in range(3) if axes[w] >= 0], :] = -1
        masked[:, [a for a in axes if a >= 0]] = -1
        w, a = np.unravel_index(np.argmax(masked), masked.shape)
        axes[w] = int(a)
    return tuple(axes)


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


def layer_flips(layer) -> tuple[bool, bool, bool]:
    return tuple(layer.metadata.get(FLIPS_KEY, (False, False, False)))


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
    return _data_to_index(layer, data)


def world_to_indices(layer, world_points, shape) -> np.ndarray:
    """World points (N x 3, e.g. a shape's vertices) -> session voxel indices (N x 3), clipped to a
    volume of ``shape`` (a stroke drawn past the image's edge ends on it)."""
    indices = np.array([world_to_index(layer, point) for point in np.asarray(world_points, dtype=float)])
    return np.clip(indices.reshape(-1, 3), 0, np.asarray(shape) - 1)


def index_to_world(layer, index) -> np.ndarray:
    """Session voxel index (i, j, k) -> napari world coordinates of the layer."""
    index = np.asarray(index, dtype=float)
    axes, flips, shape = layer_axes(layer), layer_flips(layer), np.shape(layer.data)
    data = np.array([shape[w] - 1 - index[axes[w]] if flips[w] else index[axes[w]] for w in range(3)])
    return np.asarray(layer.data_to_world(data), dtype=float)


def _data_to_index(layer, data: np.ndarray) -> np.ndarray:
    axes, flips, shape = layer_axes(layer), layer_flips(layer), np.shape(layer.data)
    index = np.empty(3)
    for w in range(3):
        index[axes[w]] = shape[w] - 1 - data[w] if flips[w] else data[w]
    return index


def layer_transform(layer) -> dict:
    """Keyword arguments that give another layer (labels, uncertainty) the same transform as ``layer``."""
    return {
        "scale": layer.scale,
        "translate": layer.translate,
        "rotate": layer.rotate,
        "shear": layer.shear,
        "affine": layer.affine.affine_matrix,
    }


def session_view(array: np.ndarray, layer) -> np.ndarray:
    """A session array (i, j, k) seen in the layer's data order (a view: updates show after a refresh)."""
    flips = layer_flips(layer)
    return array.transpose(layer_axes(layer))[tuple(slice(None, None, -1) if f else slice(None) for f in flips)]
