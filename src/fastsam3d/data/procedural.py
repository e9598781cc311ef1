"""Procedural anatomy for SynthSeg-style training: vessels, lesions, thin sheets and shells.

What label maps of real anatomy lack or under-represent: vessels 1-30 mm across with
bifurcations, lesions and tumours (round, lobulated or spiculated, with or without a rim, as an
enhancing wall or necrotic core gives), thin sheets and shells (capsules, cyst walls, diaphragm). The generators here draw such structures as boolean masks on a training crop's grid;
the caller overlays them on its label map, paints random intensities per label and uses the
structure as the segmentation target. Every structure passes through the central cube of side
``size / 4`` (where the caller puts the click), has at least 8 voxels and depends only on ``rng``.
Sizes are in millimetres, converted with the crop's isotropic ``spacing_mm`` (nothing thinner
than one voxel); 6-11 ms per 48³ crop and generator, numpy and scipy.ndimage only (docs/training.md).
"""

from __future__ import annotations

import math
from functools import cache
from typing import NamedTuple

import numpy as np
from scipy import ndimage
from scipy.spatial.transform import Rotation

MIN_VOXELS = 8
CENTRELINE_STEP = 0.5  # voxels between consecutive centreline samples
MIN_TUBE_RADIUS = 0.6  # voxels: the thinnest tube is one voxel wide
RADIUS_QUANTUM = 4  # ball radii are painted in steps of 1/4 voxel


def _central_bounds(size: int) -> tuple[int, int]:
    """[start, stop) voxel indices of the central cube of side ``size / 4`` along each axis."""
    side = max(size // 4, 1)
    start = (size - side) // 2
    return start, start + side


def _random_central_point(size: int, rng: np.random.Generator) -> np.ndarray:
    """(3,) continuous voxel coordinates whose nearest voxel lies in the central cube."""
    start, stop = _central_bounds(size)
    return rng.uniform(start, stop - 1, 3)


def _log_uniform(rng: np.random.Generator, low: float, high: float) -> float:
    return float(np.exp(rng.uniform(np.log(low), np.log(high))))


def _unit_vectors(rng: np.random.Generator, count: int) -> np.ndarray:
    """(count, 3) directions uniform on the sphere."""
    vectors = rng.normal(size=(count, 3))
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    """(3, 3) rotation matrix, uniform over rotations (a normalised Gaussian quaternion)."""
    return Rotation.from_quat(rng.normal(size=4)).as_matrix()


def _centred_axes(size: int, origin: np.ndarray) -> list[np.ndarray]:
    """Voxel coordinates minus ``origin`` along each axis, shaped to broadcast to (size,)*3."""
    axis = np.arange(size, dtype=np.float32)
    return [(axis - np.float32(origin[k])).reshape([-1 if j == k else 1 for j in range(3)]) for k in range(3)]


def _ensure_min_voxels(mask: np.ndarray) -> np.ndarray:
    """Dilate a non-empty mask until it has ``MIN_VOXELS`` voxels (needed only on very small crops)."""
    while mask.sum() < MIN_VOXELS:
        mask = ndimage.binary_dilation(mask)
    return mask


def _component_at(mask: np.ndarray, voxel: tuple[int, ...]) -> np.ndarray:
    """The face-connected component of ``mask`` that contains ``voxel`` (which must be in the mask)."""
    labels, _ = ndimage.label(mask)
    return labels == labels[voxel]


# --- vessels -------------------------------------------------------------------------------------


class _Branch(NamedTuple):
    points: np.ndarray  # (n, 3) centreline in voxel coordinates, CENTRELINE_STEP apart
    directions: np.ndarray  # (n, 3) unit tangents
    radii: np.ndarray  # (n,) tube radius in voxels


def _bend_series(steps: int, spacing_mm: float, radius_mm: float, rng: np.random.Generator) -> np.ndarray:
    """(steps, 3) per-step changes of a centreline's unit direction.

    The bending direction varies smoothly along the vessel (correlation length 5–20 mm) at a
    curvature of 1/150–1/25 per mm; a quarter of the vessels get a tortuous stretch of 10–40 mm
    that wiggles at a curvature of 1/12–1/4 per mm. No bend is tighter than twice the radius.
    """
    steps_per_mm = 1 / (spacing_mm * CENTRELINE_STEP)
    curvature = np.full(steps, _log_uniform(rng, 1 / 150, 1 / 25))
    bend = ndimage.gaussian_filter1d(rng.normal(size=(steps, 3)), rng.uniform(5, 20) * steps_per_mm, axis=0)
    bend /= np.sqrt((bend**2).sum(1).mean())
    if rng.random() < 0.25:
        tortuous_curvature = _log_uniform(rng, 1 / 12, 1 / 4)
        start = int(rng.integers(0, steps))
        stop = start + int(rng.uniform(10, 40) * steps_per_mm)
        wiggle = ndimage.gaussian_filter1d(rng.normal(size=(steps, 3)), 0.5 / tortuous_curvature * steps_per_mm, axis=0)
        bend[start:stop] = wiggle[start:stop] / np.sqrt((wiggle**2).sum(1).mean())
        curvature[start:stop] = tortuous_curvature
    curvature = np.minimum(curvature, 0.5 / radius_mm)
    return bend * (curvature * spacing_mm * CENTRELINE_STEP)[:, None]


def _grow_centreline(
    start: np.ndarray, direction: np.ndarray, bend: np.ndarray, low: float, high: float
) -> tuple[np.ndarray, np.ndarray]:
    """Walk from ``start`` for up to ``len(bend)`` steps, turning by ``bend`` at each, until leaving [low, high]³.

    Returns the (n, 3) points and (n, 3) unit directions, starting with ``start``.
    """
    x, y, z = start.tolist()
    dx, dy, dz = direction.tolist()
    points, directions = [], []
    for bx, by, bz in bend.tolist():  # plain floats: ~1 µs a step against ~20 µs for numpy 3-vectors
        points.append((x, y, z))
        directions.append((dx, dy, dz))
        dx, dy, dz = dx + bx, dy + by, dz + bz
        norm = math.sqrt(dx * dx + dy * dy + dz * dz)
        dx, dy, dz = dx / norm, dy / norm, dz / norm
        x, y, z = x + CENTRELINE_STEP * dx, y + CENTRELINE_STEP * dy, z + CENTRELINE_STEP * dz
        if not (low < x < high and low < y < high and low < z < high):
            break
    return np.array(points), np.array(directions)


def _tapered(radius: float, steps: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """(steps,) radii in voxels shrinking from ``radius`` by up to 30 % per crop length, at least one voxel wide."""
    arclength = np.arange(steps) * CENTRELINE_STEP
    return np.maximum(radius * (1 - rng.uniform(0, 0.3) * arclength / size), MIN_TUBE_RADIUS)


@cache
def _ball(radius_key: int) -> np.ndarray:
    """Bool ball of radius ``radius_key / RADIUS_QUANTUM`` voxels, centred in a (2R+1)³ box."""
    reach = radius_key // RADIUS_QUANTUM
    offsets = np.arange(-reach, reach + 1) ** 2
    ball = (
        offsets[:, None, None] + offsets[None, :, None] + offsets[None, None, :] <= (radius_key / RADIUS_QUANTUM) ** 2
    )
    ball.flags.writeable = False
    return ball


def _paint_tubes(branches: list[_Branch], size: int) -> np.ndarray:
    """Bool (size,)*3 union of balls centred on the branches' voxels, one per centreline sample.

    Between consecutive centreline voxels that differ along several axes, the voxels stepping one
    axis at a time are added, so that even a one-voxel-wide tube is face-connected.
    """
    centres, radius_keys = [], []
    for branch in branches:
        voxels = np.rint(branch.points).astype(np.int64)
        before, after = voxels[:-1], voxels[1:]
        step_x = np.column_stack([after[:, 0], before[:, 1], before[:, 2]])
        step_xy = np.column_stack([after[:, 0], after[:, 1], before[:, 2]])
        keys = np.rint(branch.radii * RADIUS_QUANTUM).astype(np.int64)
        centres += [voxels, step_x, step_xy]
        radius_keys += [keys, keys[:-1], keys[:-1]]
    balls = np.unique(np.column_stack([np.concatenate(centres), np.concatenate(radius_keys)]), axis=0)
    reach = balls[:, 3:] // RADIUS_QUANTUM
    balls = balls[((balls[:, :3] >= -reach) & (balls[:, :3] <= size - 1 + reach)).all(1)]
    mask = np.zeros((size,) * 3, bool)
    for x, y, z, key in balls.tolist():
        ball, ball_reach = _ball(key), key // RADIUS_QUANTUM
        box, ball_box = [], []
        for centre in (x, y, z):
            low, high = max(centre - ball_reach, 0), min(centre + ball_reach + 1, size)
            box.append(slice(low, high))
            ball_box.append(slice(low - centre + ball_reach, high - centre + ball_reach))
        mask[tuple(box)] |= ball[tuple(ball_box)]
    return mask


def vessel_tree(size: int, spacing_mm: float, rng: np.random.Generator) -> np.ndarray:
    """Bool (size,)*3 mask of a branching tubular tree on a crop of isotropic ``spacing_mm`` voxels.

    The root has a diameter log-uniform in 1–30 mm and passes through a random point of the
    central cube: its centreline is grown from there both ways with smoothly varying direction
    (sometimes a tortuous stretch) until it leaves the crop (one way it may also end inside), so
    the central-cube guarantee holds by construction. 0–4 children branch off random points of
    the tree inside the crop at 20–70°, each with radius parent × U(0.55, 0.9); every branch
    tapers slightly. Only the part connected to the root's central point is kept (a vessel may
    leave the crop and come back).
    """
    root_radius_mm = _log_uniform(rng, 0.5, 15)
    root_radius = max(root_radius_mm / spacing_mm, MIN_TUBE_RADIUS)
    margin = math.ceil(root_radius) + 1  # centrelines stop where their balls no longer reach the crop
    low, high = -margin, size - 1 + margin
    max_steps = int(3 * size / CENTRELINE_STEP)

    def end_steps() -> int:
        """Half of the branches end inside the crop after 0.3–1 crop lengths; the others run on out of it."""
        return int(rng.uniform(0.3, 1) * size / CENTRELINE_STEP) if rng.random() < 0.5 else max_steps

    anchor = _random_central_point(size, rng)
    heading = _unit_vectors(rng, 1)[0]
    back_points, back_directions = _grow_centreline(
        anchor, -heading, _bend_series(max_steps, spacing_mm, root_radius_mm, rng), low, high
    )
    ahead_points, ahead_directions = _grow_centreline(
        anchor, heading, _bend_series(end_steps(), spacing_mm, root_radius_mm, rng), low, high
    )
    points = np.concatenate([back_points[::-1], ahead_points[1:]])
    directions = np.concatenate([-back_directions[::-1], ahead_directions[1:]])
    branches = [_Branch(points, directions, _tapered(root_radius, len(points), size, rng))]

    for _ in range(rng.integers(0, 5)):
        inside = [np.flatnonzero(((branch.points >= 0) & (branch.points <= size - 1)).all(1)) for branch in branches]
        weights = np.array([len(indices) for indices in inside], float)
        parent_index = rng.choice(len(branches), p=weights / weights.sum())
        parent, at = branches[parent_index], rng.choice(inside[parent_index])
        radius = max(parent.radii[at] * rng.uniform(0.55, 0.9), MIN_TUBE_RADIUS)
        axis = rng.normal(size=3)
        axis -= axis @ parent.directions[at] * parent.directions[at]
        angle = np.deg2rad(rng.uniform(20, 70))
        heading = np.cos(angle) * parent.directions[at] + np.sin(angle) * axis / np.linalg.norm(axis)
        bend = _bend_series(end_steps(), spacing_mm, radius * spacing_mm, rng)
        points, directions = _grow_centreline(parent.points[at], heading, bend, low, high)
        branches.append(_Branch(points, directions, _tapered(radius, len(points), size, rng)))

    mask = _component_at(_paint_tubes(branches, size), tuple(np.rint(anchor).astype(int)))
    return _ensure_min_voxels(mask)


# --- lesions -------------------------------------------------------------------------------------


class _Bumps(NamedTuple):
    """Bumps on a unit sphere's radius: ``heights[k] · exp((cos θ − 1) / widths[k])`` at angle θ from ``centres[k]``.

    Wide bumps (width 0.15–0.6) make lobes, narrow ones (0.003–0.02) spikes that taper to a point.
    """

    centres: np.ndarray  # (k, 3) unit vectors
    heights: np.ndarray  # (k,) relative to the radius; negative heights are dents
    widths: np.ndarray  # (k,)

    def covers(self, directions: list[np.ndarray]) -> np.ndarray:
        """(n,) bool: which unit ``directions`` (three (n,) components) some bump raises by over e⁻⁸ of its height."""
        covered = np.zeros(directions[0].shape, bool)
        for centre, width in zip(self.centres, self.widths, strict=True):
            covered |= (
                sum(component * np.float32(c) for component, c in zip(directions, centre, strict=True)) > 1 - 8 * width
            )
        return covered

    def radius_change(self, directions: list[np.ndarray]) -> np.ndarray:
        """(n,) float32 summed bumps along unit ``directions`` (three (n,) components).

        Each bump is evaluated only where it exceeds e⁻⁸ of its height, which keeps spikes cheap.
        """
        total = np.zeros(directions[0].shape, np.float32)
        for centre, height, width in zip(self.centres, self.heights, self.widths, strict=True):
            cosine = sum(component * np.float32(c) for component, c in zip(directions, centre, strict=True))
            near = np.flatnonzero(cosine > 1 - 8 * width)
            total[near] += np.float32(height) * np.exp((cosine[near] - 1) / np.float32(width))
        return total


def _random_bumps(
    rng: np.random.Generator, count: int, heights: np.ndarray, low_width: float, high_width: float
) -> _Bumps:
    return _Bumps(_unit_vectors(rng, count), heights, rng.uniform(low_width, high_width, count))


def lesion(size: int, spacing_mm: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(lesion, rim), both bool (size,)*3: an irregular blob centred in the central cube, and maybe its rim.

    The lesion's volume-equivalent diameter is log-uniform in 4–60 mm (at least 3 voxels): an
    ellipsoid (axis ratios up to 2:1, random rotation) whose boundary radius varies smoothly with
    direction, by 3–8 random lobes or dents of up to ±35 %, and in 30 % of lesions 3–12 thin spikes
    of 20–60 % of the radius; the profile is rescaled to keep the drawn volume. Only the component
    containing the centre voxel is kept. With probability 0.4 the rim is the lesion's voxels within
    1–4 mm (at least one voxel) of its outside, otherwise all False; it is a subset of the lesion.
    """
    centre = rng.integers(*_central_bounds(size), size=3)
    radius = max(_log_uniform(rng, 4, 60) / 2 / spacing_mm, 1.5)
    log_ratios = rng.uniform(0, np.log(2), 3)
    semi_axes = radius * np.exp(log_ratios - log_ratios.mean())
    rotation = _random_rotation(rng)
    lobe_count = int(rng.integers(3, 9))
    lobes = _random_bumps(rng, lobe_count, rng.uniform(-1, 1, lobe_count) * rng.uniform(0, 0.35), 0.15, 0.6)
    spike_count = int(rng.integers(3, 13)) if rng.random() < 0.3 else 0
    spikes = _random_bumps(rng, spike_count, rng.uniform(0.2, 0.6, spike_count), 0.003, 0.02)

    # The profile's extremes lie at the bumps' centres: with 512 random directions, those samples bound it.
    samples = list(np.concatenate([_unit_vectors(rng, 512), lobes.centres, spikes.centres]).astype(np.float32).T)
    lobed = 1 + lobes.radius_change(samples)
    profile = lobed + spikes.radius_change(samples)
    volume_scale = np.float32(np.mean(profile[:512] ** 3) ** (-1 / 3))
    inner = max(0.95 * lobed.min() * volume_scale, 0.4)  # deep dents stop at 0.4: the centre stays inside
    outer_lobes, outer = (1.05 * p.max() * volume_scale for p in (lobed, profile))

    reach = semi_axes.max() * outer + 1
    box = tuple(slice(max(int(c - reach), 0), min(int(c + reach) + 2, size)) for c in centre)
    offsets = [
        (np.arange(s.start, s.stop, dtype=np.float32) - c).reshape([-1 if j == k else 1 for j in range(3)])
        for k, (s, c) in enumerate(zip(box, centre, strict=True))
    ]
    frame = (rotation / semi_axes).astype(np.float32)  # voxel offsets → the unit sphere's frame
    local = [sum(offsets[j] * frame[j, k] for j in range(3)).ravel() for k in range(3)]
    distance = np.sqrt(sum(q**2 for q in local))
    inside = distance <= inner
    band = np.flatnonzero(~inside & (distance <= outer))
    directions = [q[band] / distance[band] for q in local]
    decides = (distance[band] <= outer_lobes) | spikes.covers(directions)
    band, directions = band[decides], [d[decides] for d in directions]
    boundary = (1 + lobes.radius_change(directions) + spikes.radius_change(directions)) * volume_scale
    inside[band] = distance[band] <= boundary
    mask = np.zeros((size,) * 3, bool)
    mask[box] = inside.reshape([s.stop - s.start for s in box])
    mask = _ensure_min_voxels(_component_at(mask, tuple(centre)))

    rim = np.zeros_like(mask)
    if rng.random() < 0.4:
        thickness_mm = max(rng.uniform(1, 4), spacing_mm)
        (found,) = ndimage.find_objects(mask.astype(np.uint8))
        padded = tuple(slice(max(s.start - 1, 0), min(s.stop + 1, size)) for s in found)
        depth_mm = ndimage.distance_transform_edt(mask[padded], sampling=spacing_mm)
        rim[padded] = mask[padded] & (depth_mm <= thickness_mm)
    return mask, rim


# --- thin sheets and shells ----------------------------------------------------------------------


def _curved_patch_distance(
    offsets: list[np.ndarray], spacing_mm: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """(distance in voxels to a curved surface through the origin, bool disc of the patch), both (size,)*3.

    The surface is a height field over a randomly oriented plane: a quadric (curvature up to 1/40
    per mm either way) plus 0–3 ripples of 30–80 mm wavelength; the patch is the part within
    20–80 mm of the origin along the plane. The distance is |height − h(u, v)| / |∇|, first order.
    """
    axes = _random_rotation(rng)
    u, v, height = (sum(offsets[j] * np.float32(axes[j, k]) for j in range(3)) for k in range(3))
    curvature_u, curvature_v = (rng.uniform(-1 / 40, 1 / 40, 2) * spacing_mm).tolist()
    surface = 0.5 * (curvature_u * u**2 + curvature_v * v**2)
    slope_u, slope_v = curvature_u * u, curvature_v * v
    for _ in range(rng.integers(0, 4)):
        wavelength = rng.uniform(30, 80) / spacing_mm
        amplitude = rng.uniform(0, 0.06) * wavelength
        wave_u, wave_v = (2 * np.pi / wavelength * _unit_vectors(rng, 1)[0, :2]).tolist()
        phase = rng.uniform(0, 2 * np.pi)
        argument = wave_u * u + wave_v * v + phase
        surface = surface + amplitude * (np.sin(argument) - math.sin(phase))
        slope_u = slope_u + amplitude * wave_u * np.cos(argument)
        slope_v = slope_v + amplitude * wave_v * np.cos(argument)
    distance = np.abs(height - surface) / np.sqrt(1 + slope_u**2 + slope_v**2)
    patch_radius = rng.uniform(20, 80) / spacing_mm
    return distance, u**2 + v**2 <= patch_radius**2


def _shell_distance(
    offsets: list[np.ndarray], spacing_mm: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """(distance in voxels to an ellipsoid through the origin, bool part of the shell kept), both (size,)*3.

    Mean radius 10–60 mm, axis ratios up to 1.5:1, random rotation; the origin lies on the surface.
    Half of the shells are closed, the others cut to a cap of 40–150° half-angle around the origin.
    The distance is |ρ − 1| / |∇ρ| for ρ the ellipsoid's normalised radius (exact for a sphere).
    """
    log_ratios = rng.uniform(0, np.log(1.5), 3)
    semi_axes = rng.uniform(10, 60) / spacing_mm * np.exp(log_ratios - log_ratios.mean())
    axes = _random_rotation(rng)
    on_surface = _unit_vectors(rng, 1)[0]  # where the origin lies, in the unit sphere's frame
    local = [
        sum(offsets[j] * np.float32(axes[j, k]) for j in range(3)) / np.float32(semi_axes[k])
        + np.float32(on_surface[k])
        for k in range(3)
    ]
    rho = np.sqrt(sum(q**2 for q in local))
    gradient = np.sqrt(sum((q / np.float32(a)) ** 2 for q, a in zip(local, semi_axes, strict=True))) / rho
    distance = np.abs(rho - 1) / gradient
    if rng.random() < 0.5:
        return distance, np.ones(distance.shape, bool)
    cosine = sum(q * np.float32(w) for q, w in zip(local, on_surface, strict=True)) / rho
    return distance, cosine >= np.cos(np.deg2rad(rng.uniform(40, 150)))


def thin_sheet(size: int, spacing_mm: float, rng: np.random.Generator) -> np.ndarray:
    """Bool (size,)*3 mask of a thin curved sheet or shell, 1–4 mm (at least one voxel) thick.

    Half are a patch of a curved surface (a plane plus a smooth height field, within a disc of
    radius 20–80 mm), half part of an ellipsoidal shell of radius 10–60 mm (a capsule, a cyst wall,
    the diaphragm's dome). Either passes through a random point of the central cube.
    """
    anchor = _random_central_point(size, rng)
    half_thickness = max(rng.uniform(1, 4) / spacing_mm, 1) / 2
    offsets = _centred_axes(size, anchor)
    draw = _curved_patch_distance if rng.random() < 0.5 else _shell_distance
    distance, kept = draw(offsets, spacing_mm, rng)
    mask = (distance <= half_thickness) & kept
    mask[tuple(np.rint(anchor).astype(int))] = True  # within 0.87 voxel of the surface: usually drawn already
    return _ensure_min_voxels(mask)
