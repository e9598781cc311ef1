"""Scribble and lasso prompts: a user's stroke checked and rasterised onto the input voxel grid.

A *scribble* is a polyline of input voxel indices, on one slice or freehand in 3D; it covers the
voxels along its segments. A *lasso* is a closed polygon on one slice; it covers the voxels of its
filled area on that slice (its outline included). Both engines take a :class:`Stroke` the same way
(``add_scribble`` / ``add_lasso``) and turn it into what their model understands (docs/prompts.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from scipy import ndimage

from ..errors import PromptError

MAX_STROKE_POINTS = 10_000  # vertices one stroke may have (a 1e6-point stroke is refused, not rasterised)
SAMPLES_PER_VOXEL = 4  # points sampled per voxel of a scribble's length when rasterising it
LASSO_BAND = (1.5, 3.0)  # ROI voxels outside a lasso's outline that a dense-prompt model is told are outside
StrokeKind = Literal["scribble", "lasso"]


@dataclass(frozen=True)
class Stroke:
    """A checked stroke: its vertices (continuous input voxel indices) and the voxels it covers.

    ``axis`` is the input axis a lasso's slice lies across (None for a scribble); ``after_clicks``
    is how many clicks the object had when the stroke was drawn, which orders it among them.
    """

    kind: StrokeKind
    positive: bool
    vertices: tuple[tuple[float, float, float], ...]
    voxels: np.ndarray = field(compare=False, repr=False)  # (M, 3) int32 input voxel indices
    axis: int | None = None
    after_clicks: int = 0

    @property
    def slice_index(self) -> int | None:
        """The index of a lasso's slice along ``axis``."""
        return None if self.axis is None else int(self.voxels[0, self.axis])

    def outline_band(self, shape: tuple[int, int, int], inner: float, outer: float) -> np.ndarray:
        """(K, 3) voxels on a lasso's slice between ``inner`` and ``outer`` voxels outside its area."""
        if self.axis is None:
            raise ValueError("only a lasso has an outline band")
        low = np.maximum(self.voxels.min(0) - int(np.ceil(outer)) - 1, 0)
        high = np.minimum(self.voxels.max(0) + int(np.ceil(outer)) + 2, shape)
        low[self.axis], high[self.axis] = self.slice_index, self.slice_index + 1
        area = np.zeros(tuple(high - low), dtype=bool)
        area[tuple((self.voxels - low).T)] = True
        distance = ndimage.distance_transform_edt(~area)
        band = np.argwhere((distance > inner) & (distance <= outer))
        return (band + low).astype(np.int32)


def checked_points(points, limit: int = MAX_STROKE_POINTS) -> np.ndarray:
    """A stroke's points as an (N, 3) float array, refused early when there are too many."""
    try:
        count = len(points)
    except TypeError:
        raise PromptError("a stroke is a list of points (i, j, k)") from None
    if count > limit:
        raise PromptError(f"a stroke may have at most {limit} points, got {count}")
    array = np.asarray(points, dtype=np.float64)
    if array.ndim != 2 or array.shape[1] != 3 or not len(array):
        raise PromptError(f"a stroke is a list of points with three coordinates each, got shape {array.shape}")
    if not np.isfinite(array).all():
        raise PromptError("a stroke's points must be finite numbers")
    return array


def scribble(indices: np.ndarray, positive: bool, shape: tuple[int, int, int], after_clicks: int = 0) -> Stroke:
    """A scribble through checked input voxel indices (N, 3), N >= 2."""
    if len(indices) < 2:
        raise PromptError("a scribble needs at least 2 points (use a click for a single point)")
    starts, ends = indices[:-1], indices[1:]
    lengths = np.linalg.norm(ends - starts, axis=1)
    parts = []
    for start, end, length in zip(starts, ends, lengths, strict=True):
        steps = max(int(np.ceil(length * SAMPLES_PER_VOXEL)), 1)
        parts.append(start + np.linspace(0.0, 1.0, steps, endpoint=False)[:, None] * (end - start))
    voxels = _unique_voxels(np.concatenate([*parts, indices[-1:]]), shape)
    return Stroke("scribble", bool(positive), _vertices(indices), voxels, None, after_clicks)


def lasso(indices: np.ndarray, positive: bool, shape: tuple[int, int, int], after_clicks: int = 0) -> Stroke:
    """A lasso: a closed, simple polygon of checked input voxel indices (N, 3), N >= 3, on one slice."""
    if len(indices) < 3:
        raise PromptError("a lasso needs at least 3 points")
    rounded = np.round(indices).astype(np.int64)
    flat_axes = [a for a in range(3) if np.all(rounded[:, a] == rounded[0, a])]
    if not flat_axes:
        raise PromptError("a lasso must lie on one slice: its points span several slices along every axis")
    if len(flat_axes) > 1:
        raise PromptError("a lasso has no area: its points lie on one line")
    axis = flat_axes[0]
    plane_axes = [a for a in range(3) if a != axis]
    polygon = indices[:, plane_axes]
    if np.all(polygon[0] == polygon[-1]):
        polygon = polygon[:-1]
    if len(polygon) >= 4 and _self_intersects(polygon):
        raise PromptError("a lasso must not cross itself: draw one closed outline")
    if len(polygon) < 3 or abs(_signed_area(polygon)) < 0.5:
        raise PromptError("a lasso has no area: draw a closed outline around the region")
    low = np.maximum(np.floor(polygon.min(0)).astype(int), 0)
    high = np.minimum(np.ceil(polygon.max(0)).astype(int), [shape[a] - 1 for a in plane_axes])
    grid = np.stack(np.meshgrid(*(np.arange(lo, hi + 1) for lo, hi in zip(low, high, strict=True)), indexing="ij"), -1)
    pixels = grid.reshape(-1, 2)
    from matplotlib.path import Path as PolygonPath  # imported here: listing commands never load matplotlib

    inside = pixels[PolygonPath(polygon).contains_points(pixels.astype(np.float64))]
    closed = np.concatenate([indices, indices[:1]])
    outline = scribble(closed, positive, shape).voxels
    area = np.zeros((len(inside), 3), dtype=np.int64)
    area[:, plane_axes[0]], area[:, plane_axes[1]] = inside[:, 0], inside[:, 1]
    area[:, axis] = rounded[0, axis]
    outline[:, axis] = rounded[0, axis]
    voxels = _unique_voxels(np.concatenate([area, outline]).astype(np.float64), shape)
    return Stroke("lasso", bool(positive), _vertices(indices), voxels, axis, after_clicks)


def from_slice_mask(
    kind: StrokeKind, positive: bool, axis: int, index: int, origin, plane: np.ndarray, shape: tuple[int, int, int]
) -> Stroke:
    """A stroke drawn as pixels on one slice: ``plane`` (a boolean 2D crop over the two other input
    axes, in increasing axis order) placed at ``origin`` on slice ``index`` across ``axis``. A
    scribble covers the drawn pixels; a lasso covers the area they enclose (holes filled)."""
    if axis not in (0, 1, 2) or not 0 <= index < shape[axis]:
        raise PromptError(f"slice {index} across axis {axis} is outside the volume of shape {shape}")
    others = [a for a in range(3) if a != axis]
    plane = np.asarray(plane, dtype=bool)
    origin = np.asarray(origin, dtype=np.int64)
    if plane.ndim != 2 or origin.shape != (2,):
        raise PromptError("a drawn stroke is a 2D crop of pixels with a 2-number origin")
    if np.any(origin < 0) or np.any(origin + plane.shape > np.array([shape[a] for a in others])):
        raise PromptError(f"the drawn crop at {origin.tolist()} of shape {list(plane.shape)} leaves the slice")
    if kind == "lasso":
        plane = ndimage.binary_fill_holes(plane)
    pixels = np.argwhere(plane)
    if not len(pixels):
        raise PromptError(f"the drawn {kind} is empty")
    if kind == "lasso" and len(pixels) < 3:
        raise PromptError("a lasso has no area: draw a closed outline around the region")
    voxels = np.empty((len(pixels), 3), dtype=np.int32)
    voxels[:, others[0]], voxels[:, others[1]] = pixels[:, 0] + origin[0], pixels[:, 1] + origin[1]
    voxels[:, axis] = index
    ends = voxels[[0, -1]].astype(np.float64)
    return Stroke(kind, bool(positive), _vertices(ends), voxels, axis if kind == "lasso" else None)


def sampled(points: np.ndarray, count: int) -> np.ndarray:
    """At most ``count`` of ``points`` (N, 3), evenly spread along their order (all when fewer)."""
    if len(points) <= count:
        return points
    return points[np.linspace(0, len(points) - 1, count).round().astype(int)]


def interior_points(stroke: Stroke, shape: tuple[int, int, int], count: int) -> np.ndarray:
    """Up to ``count`` voxels deep inside a lasso's area, spread out: the deepest first, then each
    next one the deepest voxel farther than the area's radius / 2 from those already chosen."""
    voxels = stroke.voxels
    low = voxels.min(0)
    area = np.zeros(tuple(voxels.max(0) - low + 1), dtype=bool)
    area[tuple((voxels - low).T)] = True
    depth = ndimage.distance_transform_edt(np.pad(area, 1))[1:-1, 1:-1, 1:-1][tuple((voxels - low).T)]
    order = np.argsort(-depth, kind="stable")
    chosen: list[np.ndarray] = []
    spread = max(float(depth.max()) / 2.0, 1.0)
    for candidate in voxels[order]:
        if all(np.linalg.norm(candidate - c) >= spread for c in chosen):
            chosen.append(candidate)
            if len(chosen) == count:
                break
    return np.array(chosen, dtype=np.float64)


def _vertices(indices: np.ndarray) -> tuple[tuple[float, float, float], ...]:
    return tuple(tuple(float(v) for v in point) for point in indices)


def _unique_voxels(points: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """Rounded, clipped to the volume, unique, in first-seen order."""
    voxels = np.clip(np.round(points), 0, np.array(shape) - 1).astype(np.int32)
    _, first = np.unique(voxels, axis=0, return_index=True)
    return voxels[np.sort(first)]


def _signed_area(polygon: np.ndarray) -> float:
    x, y = polygon[:, 0], polygon[:, 1]
    return 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))


def _self_intersects(polygon: np.ndarray) -> bool:
    """Whether two non-adjacent edges of the closed polygon (N, 2) properly cross."""
    a, b = polygon, np.roll(polygon, -1, axis=0)
    count = len(polygon)
    for i in range(count):
        j = np.arange(i + 2, count if i > 0 else count - 1)
        if not len(j):
            continue
        d1 = _cross(a[j], b[j], a[i])
        d2 = _cross(a[j], b[j], b[i])
        d3 = _cross(a[i], b[i], a[j])
        d4 = _cross(a[i], b[i], b[j])
        if np.any((d1 * d2 < 0) & (d3 * d4 < 0)):
            return True
    return False


def _cross(origin: np.ndarray, towards: np.ndarray, point: np.ndarray) -> np.ndarray:
    """z of (towards - origin) x (point - origin), broadcast over rows."""
    u, v = towards - origin, point - origin
    return u[..., 0] * v[..., 1] - u[..., 1] * v[..., 0]
