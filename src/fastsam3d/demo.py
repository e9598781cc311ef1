"""``fastsam3d demo``: segment a sample CT-like volume with simulated clicks, out of the box.

Makes a synthetic abdominal phantom (anisotropic, slightly oblique grid, CT intensities), then for
each structure simulates a user: the first click at the interior-most voxel of the structure,
each further click at the interior-most voxel of the largest error. Writes the image, the ground
truth, the label map and a PNG overlay, and prints Dice per click and timings.
"""

from __future__ import annotations

import importlib.util
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from .clicks import center_click, dice
from .engine.roi import canonical_axes
from .engine.session3d import Session
from .io import Volume, atomic_output, write_volume


@dataclass(frozen=True)
class Structure:
    name: str
    centre_mm: tuple[float, float, float]  # LPS, relative to the volume centre
    radii_mm: tuple[float, float, float]  # ellipsoid semi-axes; radius 0 on z = a tube along z
    hu: float


PHANTOM = (
    Structure("liver", (-60.0, -5.0, 20.0), (70.0, 60.0, 55.0), 60.0),
    Structure("spleen", (80.0, 35.0, 30.0), (28.0, 38.0, 45.0), 45.0),
    Structure("left kidney", (60.0, 55.0, -45.0), (22.0, 26.0, 45.0), 170.0),
    Structure("right kidney", (-55.0, 55.0, -55.0), (22.0, 26.0, 45.0), 170.0),
    Structure("aorta", (10.0, 40.0, 0.0), (12.0, 12.0, 0.0), 230.0),
)
SPINE = Structure("spine", (0.0, 80.0, 0.0), (18.0, 18.0, 0.0), 600.0)


def make_phantom(seed: int = 0) -> tuple[Volume, dict[str, np.ndarray]]:
    """A CT-like int16 volume (0.8 x 0.8 x 2.5 mm, rotated 8° about z) and one mask per structure."""
    shape, spacing = (300, 260, 72), np.array([0.8, 0.8, 2.5])
    angle = np.radians(8.0)
    direction = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    direction = direction @ np.diag([-1.0, -1.0, 1.0])  # RAS-like storage, as most NIfTI files
    centre_index = (np.array(shape) - 1) / 2
    origin = -(direction * spacing) @ centre_index
    probe = Volume(np.zeros(shape, np.int16), spacing, origin, direction)
    grid = np.stack(np.meshgrid(*[np.arange(s, dtype=np.float32) for s in shape], indexing="ij"), -1)
    world = probe.index_to_world(grid).astype(np.float32)

    def inside(structure: Structure) -> np.ndarray:
        offset = (world - np.array(structure.centre_mm, dtype=np.float32)) / np.array(
            [r if r else np.inf for r in structure.radii_mm], dtype=np.float32
        )
        return (offset**2).sum(-1) < 1

    rng = np.random.default_rng(seed)
    body = (world[..., 0] / 150) ** 2 + ((world[..., 1] - 20) / 115) ** 2 < 1
    image = np.where(body, -90.0, -1000.0).astype(np.float32)  # fat inside the body, air outside
    image[(world[..., 0] / 140) ** 2 + ((world[..., 1] - 20) / 105) ** 2 < 1] = 35.0  # soft tissue
    masks = {}
    for structure in (*PHANTOM, SPINE):
        region = inside(structure) & body
        image[region] = structure.hu
        if structure is not SPINE:
            masks[structure.name] = region
    image = ndimage.gaussian_filter(image, sigma=(1.0, 1.0, 0.4)) + rng.normal(0, 12, shape)
    return probe.with_array(np.clip(image, -1024, 3000).astype(np.int16)), masks


def radiological_views(volume: Volume, *maps: np.ndarray, show: np.ndarray) -> list[tuple[str, float, list]]:
    """Axial, coronal and sagittal slices of ``volume`` and of each label map in ``maps``, as shown
    radiologically with ``imshow(origin="lower")``: patient right on the image left, anterior (axial)
    or superior (coronal, sagittal) up, whatever the file's axis order. Each view cuts the slice that
    crosses the most structures of the label map ``show``. Returns (title, pixel height / width, slices)."""
    axes, signs = canonical_axes(volume.direction)

    def to_ras(array: np.ndarray) -> np.ndarray:
        array = np.transpose(array, axes)
        return np.flip(array, [a for a in range(3) if signs[a] < 0])

    spacing = volume.spacing[list(axes)]
    arrays = [to_ras(a) for a in (volume.array, *maps)]
    shown = to_ras(show)
    labels = [value for value in np.unique(shown) if value]
    views = []
    for title, across, (rows, columns) in (("axial", 2, (1, 0)), ("coronal", 1, (2, 0)), ("sagittal", 0, (2, 1))):
        others = tuple(a for a in range(3) if a != across)
        areas = np.array([(shown == value).sum(others) for value in labels]).reshape(len(labels), -1)
        present = areas > 0
        smallest = np.where(present, areas, np.inf).min(0, initial=np.inf)
        index = int(np.argmax(present.sum(0) * 1e9 + np.where(np.isfinite(smallest), smallest, 0)))
        cut = [np.take(a, index, axis=across) for a in arrays]  # 2D, axes in order `others`
        if others.index(rows) == 1:
            cut = [c.T for c in cut]  # rows first
        views.append((f"{title} {index}", spacing[rows] / spacing[columns], [c[:, ::-1] for c in cut]))
    return views


def save_overlay(
    volume: Volume, labels: np.ndarray, truth: np.ndarray, path: Path, legend: dict[int, str] | None = None
) -> Path:
    """Axial, coronal and sagittal slices, radiological (patient left on the image right), each through
    the slice crossing the most structures: every structure's truth (solid) and prediction (dashed)
    contour in its colour; ``legend`` names each label value."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    colours = plt.get_cmap("tab10")
    values = [int(v) for v in np.unique(np.concatenate([np.unique(truth), np.unique(labels)])) if v]
    figure, axes = plt.subplots(1, 3, figsize=(15, 5.8))
    sides = {"axial": ("R", "L"), "coronal": ("R", "L"), "sagittal": ("A", "P")}
    for axis, (title, aspect, (image, predicted, true)) in zip(
        axes, radiological_views(volume, labels, truth, show=truth), strict=True
    ):
        axis.imshow(image, cmap="gray", vmin=-200, vmax=300, origin="lower", aspect=aspect)
        for value in values:
            for mask, style in ((true, "solid"), (predicted, "dashed")):
                if (mask == value).any():
                    axis.contour(
                        mask == value, levels=[0.5], colors=[colours(value % 10)], linestyles=style, linewidths=1.2
                    )
        left, right = sides[title.split()[0]]
        for x, text in ((0.02, left), (0.98, right)):
            axis.text(x, 0.5, text, color="white", transform=axis.transAxes, ha="center", va="center", fontsize=12)
        axis.set_title(title)
        axis.axis("off")
    figure.suptitle("fastsam3d demo (radiological: patient left on the image right)")
    names = legend or {}
    handles = [Line2D([], [], color=colours(v % 10), linewidth=3, label=names.get(v, f"label {v}")) for v in values]
    handles += [
        Line2D([], [], color="grey", linestyle="solid", label="ground truth"),
        Line2D([], [], color="grey", linestyle="dashed", label="prediction"),
    ]
    figure.legend(handles=handles, loc="lower center", ncol=min(len(handles), 4), frameon=False)
    figure.tight_layout(rect=(0, 0.1, 1, 1))
    with atomic_output(path) as temp:
        figure.savefig(temp, dpi=90, format="png")
    plt.close(figure)
    return path


def run_demo(model="default", out: Path = Path("fastsam3d-demo"), clicks: int = 5, device: str | None = None) -> dict:
    """Segment every phantom structure with ``clicks`` simulated clicks; returns Dice per click."""
    started = time.perf_counter()
    volume, masks = make_phantom()
    print(
        f"sample volume: {' x '.join(map(str, volume.shape))} voxels of {', '.join(f'{s:g}' for s in volume.spacing)} mm ({volume.orientation})"
    )
    session = Session(model, device=device)
    session.set_image(volume)
    truth = np.zeros(volume.shape, np.uint8)
    results, legend = {}, {}
    print(f"{'structure':14s} " + " ".join(f"click{c + 1:<2d}" for c in range(clicks)) + "  first click  next clicks")
    for name, target in masks.items():
        label = session.add_object(name)
        truth[target] = label
        scores, times = [], []
        for _ in range(clicks):
            click = center_click(session.mask(), target, volume.spacing)
            if click is None:
                scores.append(1.0)
                continue
            point, positive = click
            times.append(session.add_click(point, positive).timings.total)
            scores.append(dice(session.mask(), target))
        results[name] = scores
        legend[label] = f"{name} (Dice {scores[-1]:.2f})"
        later = f"{1e3 * np.mean(times[1:]):7.0f} ms" if len(times) > 1 else "        -"
        print(f"{name:14s} " + " ".join(f"{d:7.3f}" for d in scores) + f"  {times[0]:9.2f} s  {later}")
    out = Path(out)
    written = [
        write_volume(volume, out / "image.nii.gz"),
        write_volume(volume.with_array(truth), out / "truth.nii.gz"),
        session.save_labels(out / "segmentation.nii.gz"),
    ]
    if importlib.util.find_spec("matplotlib") is not None:
        written.append(save_overlay(volume, session.label_map(), truth, out / "overlay.png", legend))
    else:
        print("no overlay.png: it needs matplotlib (pip install 'fastsam3d[eval]')")
    final = [scores[-1] for scores in results.values()]
    print(f"mean Dice after {clicks} clicks: {np.mean(final):.3f}; total {time.perf_counter() - started:.1f} s")
    print("wrote " + ", ".join(str(p) for p in written))
    return results
