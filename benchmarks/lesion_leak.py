"""Does a click at the centre of a lesion leak? Synthetic lesions placed in real held-out volumes
(the development MR and DICOM CT, and the MNI152 brain template: none of them trained on), one
`center` click each; the first-click mask's volume against the lesion's.

    python benchmarks/lesion_leak.py [--model default] [--checkpoint FILE] [--count 30] [--seed 0]

Each lesion is :func:`fastsam3d.data.procedural.lesion` (4-60 mm, lobulated or spiculated, with or
without a rim) drawn at the volume's finest spacing and sampled onto its grid, at a random voxel
at least 15 mm inside the body; it is painted 1-3 robust standard deviations of its surroundings brighter or
darker than their median, with the surroundings' noise and a one-voxel blur. Prints per volume
the share of lesions whose mask is within 1.5x of the truth's volume, and the Dice.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from scipy import ndimage

from fastsam3d import load_model
from fastsam3d.clicks import center_click, dice
from fastsam3d.data.brains import brain_manifest
from fastsam3d.data.devdata import dev_manifest
from fastsam3d.data.procedural import lesion
from fastsam3d.engine.session3d import Session
from fastsam3d.evaluation.datasets import load_cases
from fastsam3d.io import Volume

LESION_GRID = 64  # voxels of the cube a lesion is drawn in (at the volume's finest spacing)
TOLERANCE = 1.5  # a mask within this factor of the lesion's volume does not leak
MIN_LESION_VOXELS = 10
BODY_DEPTH_MM = 15.0  # lesion centres lie at least this deep inside the body (not in a table or a thin rim)


def backgrounds() -> list[tuple[str, Volume]]:
    """The held-out real volumes: development MR and DICOM CT, the MNI152 template."""
    manifest, brains = dev_manifest(), brain_manifest()
    if manifest is None or brains is None:
        raise SystemExit("data not fetched: run `fastsam3d data fetch`")
    volumes = [(case.name, case.load()[0]) for case in load_cases(manifest) if case.name in ("mr", "ct_dicom")]
    return volumes + [("mni152", case.load()[0]) for case in load_cases(brains)]


def place_lesion(volume: Volume, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(image with a painted lesion, lesion mask) on the volume's grid."""
    image = volume.array.astype(np.float32)
    body = image > np.percentile(image, 40)
    candidates = np.argwhere(ndimage.distance_transform_edt(body, sampling=volume.spacing) >= BODY_DEPTH_MM)
    while True:  # a lesion thinner than the slices may miss every slice: draw again
        truth, rim = _lesion_on_grid(volume, candidates[rng.integers(len(candidates))], rng)
        if truth.sum() >= MIN_LESION_VOXELS:
            break
    around = ndimage.binary_dilation(truth, iterations=4) & ~truth
    median = float(np.median(image[around]))
    low, high = np.percentile(image[around], [25, 75])
    spread = max((high - low) / 1.35, 0.05 * (float(image.max()) - float(image.min())))
    sign = rng.choice([-1.0, 1.0])
    painted = np.full(image.shape, median + sign * rng.uniform(1, 3) * spread, np.float32)
    painted[rim] = median - sign * rng.uniform(1, 3) * spread
    painted += rng.normal(0, spread * 0.3, image.shape).astype(np.float32)
    lesion_image = np.where(truth, painted, image)
    blurred = ndimage.gaussian_filter(lesion_image, 0.7)
    edge = ndimage.binary_dilation(truth) & ~ndimage.binary_erosion(truth)
    lesion_image[edge] = blurred[edge]
    return lesion_image, truth


def _lesion_on_grid(volume: Volume, centre: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(lesion, rim) drawn at the volume's finest spacing around ``centre``, sampled onto its voxels."""
    spacing = float(np.min(volume.spacing))
    mask_grid, rim_grid = lesion(LESION_GRID, spacing, rng)
    # voxel v of the volume sits at (v - centre) * spacing mm from the lesion grid's centre
    axes = [
        np.clip(np.round((np.arange(n) - c) * s / spacing + LESION_GRID / 2), -1, LESION_GRID).astype(int)
        for n, c, s in zip(volume.shape, centre, volume.spacing, strict=True)
    ]
    inside_grid = [(a >= 0) & (a < LESION_GRID) for a in axes]
    box = tuple(slice(int(np.argmax(m)), int(len(m) - np.argmax(m[::-1]))) for m in inside_grid)
    index = np.ix_(*[a[b] for a, b in zip(axes, box, strict=True)])
    truth = np.zeros(volume.shape, bool)
    rim = np.zeros(volume.shape, bool)
    truth[box], rim[box] = mask_grid[index], rim_grid[index]
    return truth, rim


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--checkpoint", help="weights file for --model (e.g. an earlier default)")
    parser.add_argument("--count", type=int, default=30, help="lesions per volume")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    model = load_model(args.checkpoint or args.model)
    print(f"model {args.checkpoint or args.model}: {args.count} lesions per volume, one centre click each")
    print("| volume | within 1.5x of the volume | median mask/truth volume | mean Dice | first click s |")
    print("|---|---|---|---|---|")
    overall = []
    for name, volume in backgrounds():
        rng = np.random.default_rng([args.seed, len(name)])
        ratios, scores, seconds = [], [], []
        session = Session(model)
        for _ in range(args.count):
            image, truth = place_lesion(volume, rng)
            session.set_image(volume.with_array(image))
            point, _ = center_click(np.zeros_like(truth), truth, volume.spacing)
            started = time.perf_counter()
            session.add_click(point)
            seconds.append(time.perf_counter() - started)
            mask = session.mask()
            ratios.append(mask.sum() / truth.sum())
            scores.append(dice(mask, truth))
        within = np.mean([1 / TOLERANCE <= r <= TOLERANCE for r in ratios])
        overall += [1 / TOLERANCE <= r <= TOLERANCE for r in ratios]
        print(f"| {name} | {within:.0%} | {np.median(ratios):.2f} | {np.mean(scores):.3f} | {np.median(seconds):.2f} |")
    print(f"all volumes: {np.mean(overall):.0%} of {len(overall)} first-click masks within {TOLERANCE}x")


if __name__ == "__main__":
    main()
