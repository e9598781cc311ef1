"""The strokes a simulated user draws on an error region: a lasso tracing its outline on the slice
where it is largest, and a scribble along its medial axis (through the deepest voxel of each
cross-section along its longest direction). Used by the ``lasso`` and ``scribble`` protocols."""

from __future__ import annotations

import contourpy
import numpy as np
from scipy import ndimage

from .engine.strokes import LASSO_BAND, lasso, scribble
from .errors import PromptError

LASSO_VERTICES = 200  # a traced outline is thinned to at most this many vertices
SCRIBBLE_VERTICES = 24  # cross-sections a scribble passes through
SCRIBBLE_SPAN = 0.8  # the share of the region's length a scribble covers, centred


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 26-connected (8 in 2D) component of a boolean mask."""
    labels, count = ndimage.label(mask, structure=np.ones((3,) * mask.ndim))
    if count <= 1:
        return labels > 0
    return labels == 1 + int(np.argmax(ndimage.sum_labels(mask, labels, range(1, count + 1))))


def traced_lasso(region: np.ndarray, slice_axis: int) -> np.ndarray | None:
    """A closed polygon (N, 3) of input voxel indices tracing the outline of ``region``'s largest
    2D component on the slice (across ``slice_axis``) where ``region`` has most voxels; None when
    the region is empty."""
    others = tuple(a for a in range(3) if a != slice_axis)
    areas = region.sum(axis=others)
    if not areas.any():
        return None
    index = int(np.argmax(areas))
    plane = largest_component(np.take(region, index, axis=slice_axis))
    filled = ndimage.binary_fill_holes(plane)
    lines = contourpy.contour_generator(z=np.pad(filled, 1).astype(np.float64)).lines(0.5)
    outline = _on_boundary_pixels(max(lines, key=len)[:-1, ::-1] - 1.0, filled)  # (row, col)
    candidates = [outline[:: max(1, int(np.ceil(len(outline) / LASSO_VERTICES)))], outline]
    for polygon2d in candidates:
        polygon = np.empty((len(polygon2d), 3))
        polygon[:, slice_axis] = index
        polygon[:, others[0]], polygon[:, others[1]] = polygon2d[:, 0], polygon2d[:, 1]
        try:
            lasso(polygon, True, region.shape)
        except PromptError:  # a thinned outline that crosses itself: fall back to the full one
            continue
        return polygon
    return None


def _on_boundary_pixels(outline: np.ndarray, plane: np.ndarray) -> np.ndarray:
    """A contour traced between pixels (N, 2) moved onto the centres of the region's own boundary
    pixels (the nearest corner pixel inside), repeated vertices dropped: the lasso a user draws
    along the edge, not half a pixel outside it."""
    corners = np.stack([np.floor(outline), np.ceil(outline)])  # (2, N, 2)
    best = np.full(outline.shape, np.nan)
    for row_side in (0, 1):
        for col_side in (0, 1):
            pixel = np.stack([corners[row_side, :, 0], corners[col_side, :, 1]], 1).astype(int)
            valid = np.all((pixel >= 0) & (pixel < plane.shape), axis=1)
            inside = valid & plane[tuple(np.clip(pixel, 0, np.array(plane.shape) - 1).T)]
            take = inside & np.isnan(best[:, 0])
            best[take] = pixel[take]
    best = best[~np.isnan(best[:, 0])]
    keep = np.any(best != np.roll(best, 1, axis=0), axis=1)
    return best[keep]


def medial_scribble(region: np.ndarray, spacing) -> np.ndarray | None:
    """A polyline (N, 3) of input voxel indices along the medial axis of ``region``'s largest
    component: cross-sections perpendicular to its principal direction (in mm), and in each the
    voxel farthest from the border; None when the region is empty."""
    component = largest_component(region)
    voxels = np.argwhere(component)
    if len(voxels) == 0:
        return None
    spacing = np.asarray(spacing, dtype=np.float64)
    depth = ndimage.distance_transform_edt(np.pad(component, 1), sampling=spacing)[1:-1, 1:-1, 1:-1]
    if len(voxels) < 2:
        return np.repeat(voxels.astype(np.float64), 2, axis=0)
    world = voxels * spacing
    centred = world - world.mean(0)
    direction = np.linalg.svd(centred, full_matrices=False)[2][0]
    along = centred @ direction
    low, high = np.quantile(along, [(1 - SCRIBBLE_SPAN) / 2, (1 + SCRIBBLE_SPAN) / 2])
    edges = np.linspace(low, high, SCRIBBLE_VERTICES + 1)
    section = np.digitize(along, edges) - 1
    values = depth[tuple(voxels.T)]
    points = []
    for number in range(SCRIBBLE_VERTICES):
        members = np.flatnonzero(section == number)
        if len(members):
            points.append(voxels[members[np.argmax(values[members])]])
    if len(points) < 2:
        points = [voxels[np.argmax(values)]] * 2
    return np.array(points, dtype=np.float64)


def stroke_points(
    prediction: np.ndarray, truth: np.ndarray, rng: np.random.Generator, slice_axis: int = 2
) -> tuple[np.ndarray, list[int]] | None:
    """A simulated user's stroke on a ROI crop, as the points the click-unet is given for it (one per
    voxel it covers; see :meth:`fastsam3d.engine.session3d.Session._stroke_prompts`): on the larger error
    (missed: include, extra: exclude), a lasso tracing it on the slice where it is largest, or a
    scribble along its medial axis. None when there is no error or it has no area to trace."""
    missed, extra = truth & ~prediction, prediction & ~truth
    positive = missed.sum() >= extra.sum()
    error = missed if positive else extra
    if not error.any():
        return None
    if rng.random() < 0.5:
        polygon = traced_lasso(error, slice_axis)
        if polygon is None:
            return None
        stroke = lasso(polygon, positive, error.shape)
        band = stroke.outline_band(error.shape, *LASSO_BAND) if positive else np.zeros((0, 3), dtype=np.int32)
        return np.concatenate([band, stroke.voxels]).astype(np.float64), [0] * len(band) + [int(positive)] * len(
            stroke.voxels
        )
    line = medial_scribble(error, (1.0, 1.0, 1.0))
    voxels = scribble(line, positive, error.shape).voxels
    return voxels.astype(np.float64), [int(positive)] * len(voxels)
