"""First and cached clicks of the bundled ``default`` model on real structures, as a user meets them:
a warm process (``warm_up``, as the server and plugins do at start), the precision ``auto`` picks,
every structure of the development volumes (``fastsam3d data fetch``) segmented with simulated
clicks (the interior-most voxel of the largest error).

    python benchmarks/structure_clicks.py [--clicks 5] [--precision auto] [--threads 2]

Per structure: the wall-clock time of ``add_click`` for the first click and the median of the
cached ones (those that ran no encoder), with their decoder and paste, the number of ROIs the object
spans and how much of its ROI the object's box fills. Then the medians and 90th percentiles over
all structures, and over the ones that fill at least half of their single ROI's box.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
from click_ab import dev_structures  # this folder is on sys.path when a script in it runs

from fastsam3d import Session
from fastsam3d.clicks import center_click
from fastsam3d.data.devdata import dev_manifest
from fastsam3d.engine import warm_up
from fastsam3d.engine.labelmap import bounding_box
from fastsam3d.engine.prompts3d import state_rois
from fastsam3d.registry import load_model

FILLING = 0.5  # an object "fills its ROI" when its box is at least this fraction of the ROI's box


def roi_fill(session: Session, mask: np.ndarray) -> tuple[int, float]:
    """(ROIs the active object spans, its mask's box volume over its single ROI's box volume; 0 with several)."""
    rois = state_rois(session.objects[session.active].state)
    box = bounding_box(mask)
    if len(rois) != 1 or box is None:
        return len(rois), 0.0
    covered = rois[0].covered_slices()
    return 1, float(np.prod([b.stop - b.start for b in box]) / np.prod([c.stop - c.start for c in covered]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clicks", type=int, default=5)
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    manifest = dev_manifest()
    if manifest is None:
        raise SystemExit("development data not fetched: run `fastsam3d data fetch`")
    torch.set_num_threads(args.threads)
    model = load_model("default", device="cpu", precision=args.precision)
    warm_up(model, "cpu")
    print(
        f"# default in {model.precision}, {args.threads} threads, warm; torch {torch.__version__}, CPU capability "
        f"{torch.backends.cpu.get_cpu_capability()}; times in ms (wall clock of add_click)"
    )
    print("| structure | first click | cached click | its decoder | its paste | ROIs | box fill |")
    print("|---|---|---|---|---|---|---|")
    rows = []
    for key, image, target, session in dev_structures(model):
        prediction, first, cached = np.zeros_like(target), None, []
        for _ in range(args.clicks):
            click = center_click(prediction, target, image.spacing)
            if click is None:
                break
            started = time.perf_counter()
            timings = session.add_click(click[0], positive=click[1]).timings
            wall = 1e3 * (time.perf_counter() - started)
            prediction = session.mask()
            if first is None:
                first = wall
            elif timings.encoder == 0:
                cached.append((wall, 1e3 * timings.decoder, 1e3 * timings.paste))
        if not cached:
            continue
        count, fill = roi_fill(session, prediction)
        medians = [statistics.median(c[i] for c in cached) for i in range(3)]
        rows.append((first, *medians, count, fill))
        print(
            f"| {key} | {first:.0f} | {medians[0]:.1f} | {medians[1]:.1f} | {medians[2]:.1f} | {count} | {fill:.2f} |"
        )
    _summary("all structures", rows)
    _summary(f"one ROI, box fill >= {FILLING}", [row for row in rows if row[4] == 1 and row[5] >= FILLING])


def _summary(title: str, rows: list[tuple]) -> None:
    if not rows:
        print(f"# {title}: none")
        return
    values = np.array([row[:4] for row in rows])
    p50, p90 = np.percentile(values, 50, axis=0), np.percentile(values, 90, axis=0)
    print(
        f"# {title} ({len(rows)}): first click p50 {p50[0]:.0f} / p90 {p90[0]:.0f} ms; cached click "
        f"p50 {p50[1]:.1f} / p90 {p90[1]:.1f} ms (decoder p50 {p50[2]:.1f}, paste p50 {p50[3]:.1f})"
    )


if __name__ == "__main__":
    main()
