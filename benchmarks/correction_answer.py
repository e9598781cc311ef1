"""How much of the label map a correction sends: the answer's box (the voxels that changed) against
the box the engine repainted (the object's old and new boxes together, what answers carried before),
and the time to encode each, on a large organ.

    python benchmarks/correction_answer.py [--clicks 8]

The development CT (``fastsam3d data fetch``) resampled to 0.8x0.8x1.5 mm (458x379x60), its liver
(TotalSegmentator's label 5) segmented with the bundled ``default`` model: a click at the liver's
innermost voxel, then clicks at the innermost voxel of the largest error. Per click: the engine's
time and paste, both boxes in voxels and their ``encode_region`` time, and the Dice so far.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from scipy import ndimage

from fastsam3d.data.devdata import dev_manifest
from fastsam3d.engine import labelmap, open_session, warm_up
from fastsam3d.evaluation.datasets import load_cases
from fastsam3d.io import Volume
from fastsam3d.registry import load_model
from fastsam3d.server.protocol import encode_region

SPACING = np.array([0.8, 0.8, 1.5])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clicks", type=int, default=8)
    args = parser.parse_args()
    manifest = dev_manifest()
    if manifest is None:
        raise SystemExit("development data not fetched: run `fastsam3d data fetch`")
    (case,) = [c for c in load_cases(manifest, ["liver"]) if c.name == "ct"]
    image, label = case.load()
    zoom = np.asarray(image.spacing) / SPACING
    volume = Volume(
        ndimage.zoom(image.array.astype(np.float32), zoom, order=1).astype(np.int16),
        SPACING,
        image.origin,
        image.direction,
    )
    liver = ndimage.zoom((label.array == 5).astype(np.uint8), zoom, order=0).astype(bool)
    model = load_model("default", device="cpu")
    warm_up(model, "cpu")
    session = open_session(model, device="cpu")
    session.set_image(volume)
    session.add_object("liver")
    repainted = []  # (box the engine repainted, box that changed) of each repaint
    repaint = labelmap.LabelMap.repaint

    def recorded(self, box, pieces):
        changed = repaint(self, box, pieces)
        repainted.append((box, changed))
        return changed

    labelmap.LabelMap.repaint = recorded
    print(f"{volume.shape} CT at {SPACING.tolist()} mm, liver {liver.sum() * np.prod(SPACING) / 1000:.0f} ml")
    mask = np.zeros(liver.shape, dtype=bool)
    for n in range(args.clicks):
        error = liver ^ mask
        point = np.unravel_index(np.argmax(ndimage.distance_transform_edt(error)), error.shape)
        started = time.perf_counter()
        session.add_click(tuple(int(v) for v in point), positive=bool(liver[point]))
        seconds = time.perf_counter() - started
        whole, changed = repainted[-1]
        mask = session.label_map() > 0
        dice = 2 * (mask & liver).sum() / (mask.sum() + liver.sum())
        print(
            f"click {n + 1}: engine {1e3 * seconds:.0f} ms (paste {1e3 * session.timings.paste:.0f}); "
            f"repainted box {_size(whole)} -> encoded in {_encode_ms(session, whole):.0f} ms; "
            f"changed box {_size(changed)} -> {_encode_ms(session, changed):.0f} ms; Dice {dice:.3f}"
        )


def _size(box) -> str:
    return "none" if box is None else f"{np.prod([s.stop - s.start for s in box]) / 1e6:.2f} M voxels"


def _encode_ms(session, box) -> float:
    if box is None:
        return 0.0
    started = time.perf_counter()
    encode_region(box, session.labels[box])
    return 1e3 * (time.perf_counter() - started)


if __name__ == "__main__":
    main()
