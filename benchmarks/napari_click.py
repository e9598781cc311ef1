"""Click-to-labels latency of the napari widget with a cached embedding.

    xvfb-run -a python benchmarks/napari_click.py            # needs a display with OpenGL

Opens a 512x512x300 synthetic CT in a napari viewer, starts the FastSAM3D widget with the bundled
default model, makes a first click (encoder, in the worker thread; the UI keeps processing
events meanwhile: the number of event-loop turns during the encoder pass is printed), then
``--clicks`` clicks near it (cached ROI: run at once on the UI thread). Each is timed from adding the point to the points layer until the
labels layer has been updated and the canvas redrawn.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clicks", type=int, default=20)
    parser.add_argument("--shape", default="512,512,300")
    args = parser.parse_args()
    os.environ.setdefault("QT_QPA_PLATFORM", "xcb")
    import napari
    from qtpy.QtWidgets import QApplication

    sys_path = Path(__file__).resolve().parent
    import sys

    sys.path.insert(0, str(sys_path))
    from server_load import make_ct

    from fastsam3d.napari import FastSAM3DWidget

    shape = tuple(int(v) for v in args.shape.split(","))
    folder = Path(tempfile.mkdtemp())
    centre = make_ct(folder / "ct.nii.gz", shape)
    viewer = napari.Viewer(show=True)
    widget = FastSAM3DWidget(viewer)
    viewer.window.add_dock_widget(widget)
    layer = widget.open_volume(folder / "ct.nii.gz")
    widget.start(layer.name)
    app = QApplication.instance()

    def wait() -> int:
        turns = 0
        while widget.busy:
            app.processEvents()
            turns += 1
            time.sleep(0.001)
        app.processEvents()
        return turns

    started = time.perf_counter()
    widget.click(centre, True)
    turns = wait()
    print(
        f"first click (encoder in a worker): {1e3 * (time.perf_counter() - started):.0f} ms, "
        f"UI event loop ran {turns} times meanwhile"
    )
    rng = np.random.default_rng(0)
    times = []
    for _ in range(args.clicks):
        point = np.array(centre) + rng.integers(-10, 11, size=3)
        started = time.perf_counter()
        widget.click(point, bool(rng.random() < 0.7))
        wait()
        times.append(1e3 * (time.perf_counter() - started))
    times.sort()
    print(
        f"click -> labels layer updated, {args.clicks} clicks with a cached embedding: median {statistics.median(times):.0f} ms, "
        f"p95 {times[int(0.95 * (len(times) - 1))]:.0f} ms (last worker-measured {widget.last_latency_ms:.0f} ms)"
    )
    viewer.close()


if __name__ == "__main__":
    main()
