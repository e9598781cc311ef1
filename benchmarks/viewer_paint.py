"""The web viewer's time from a server answer to the painted overlay, in headless Chromium (software
WebGL, SwiftShader), on a 512x512x300 CT: the label region is written into NiiVue's drawing
texture (texSubImage3D of the changed box only) and the scene is drawn once.

    python benchmarks/viewer_paint.py [--shape 512,512,300] [--clicks 8] [--model default]

Prints per click: round trip (request to answer), the changed region's size, answer-to-paint (decode,
label copy and texture sub-upload of the region, then one draw ending with NiiVue's gl.finish),
first with the 3D rendering tile shown, then without it.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.helpers import running_server
from tests.server.test_viewer_browser import CHROMIUM_ARGS


def make_ct(path: Path, shape) -> np.ndarray:
    """A CT in HU: air outside an elliptic body (40 HU), a brighter 'organ' (140 HU); returns its centre (RAS mm)."""
    from fastsam3d.io import Volume, lps_to_ras, write_volume

    rng = np.random.default_rng(0)
    array = np.empty(shape, dtype=np.int16)
    centre = np.array(shape) // 2
    i = np.arange(shape[0])[:, None]
    j = np.arange(shape[1])[None, :]
    for k in range(shape[2]):  # slab by slab: no full-size float temporaries
        body = ((i - centre[0]) / (0.45 * shape[0])) ** 2 + ((j - centre[1]) / (0.4 * shape[1])) ** 2 <= 1
        organ = ((i - centre[0]) / 60.0) ** 2 + ((j - centre[1]) / 50.0) ** 2 + ((k - centre[2]) / 30.0) ** 2 <= 1
        array[:, :, k] = np.where(organ, 140, np.where(body, 40, -1000)) + rng.normal(0, 15, shape[:2])
    volume = Volume(array, np.array([0.8, 0.8, 1.5]), np.zeros(3), np.eye(3))
    write_volume(volume, path)
    return lps_to_ras(volume.index_to_world(centre[None].astype(float))[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="512,512,300")
    parser.add_argument("--clicks", type=int, default=8)
    parser.add_argument("--model", default="default")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    from fastsam3d.server.app import create_app
    from fastsam3d.server.settings import ServerSettings

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    shape = tuple(int(v) for v in args.shape.split(","))
    with tempfile.TemporaryDirectory() as folder:
        centre = make_ct(Path(folder) / "ct.nii.gz", shape)
        app = create_app(ServerSettings(data_dir=Path(folder), model=args.model))
        with running_server(app) as url, sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1200, "height": 800})
            page.goto(url + "/")
            page.wait_for_selector("body[data-status=idle]", timeout=60_000)
            started = time.perf_counter()
            page.click("#open")
            page.wait_for_selector("body[data-status=ready]", timeout=600_000)
            print(
                f"{shape} CT opened in the viewer in {time.perf_counter() - started:.1f} s; "
                f"window {page.input_value('#window')}",
                flush=True,
            )
            rng = np.random.default_rng(0)
            summary = {}
            print(
                f"software WebGL: {page.evaluate('window.fastsam3d.softwareRenderer')} (the 3D tile starts off there)"
            )
            for view in ("with", "without"):  # the 3D rendering tile on, then off
                if page.is_checked("#render") != (view == "with"):
                    page.click("#render")
                rows = []
                for n in range(args.clicks):
                    point = (centre + (rng.uniform(-20, 20, 3) if n or view == "without" else 0)).tolist()
                    result = page.evaluate(
                        """async (point) => {
                        const f = window.fastsam3d;
                        await f.interact('clicks', {points: [point], positive: true, coordinates: 'ras'});
                        return {paint: f.state.paintMs, stages: f.state.paintStages,
                                latency: document.getElementById('latency').textContent, status: document.body.dataset.status};
                    }""",
                        point,
                    )
                    rows.append(result)
                    stages = result["stages"] or {}
                    print(
                        f"{view} 3D view, click {n + 1}: {result['latency']} [{result['status']}]; region "
                        f"{stages.get('voxels', 0) / 1e6:.1f} M voxels written in {stages.get('region', 0):.0f} ms "
                        f"(inflate {stages.get('decode', 0):.0f}), "
                        f"drawn in {stages.get('draw', 0):.0f} ms",
                        flush=True,
                    )
                paints = [r["paint"] for r in rows[1:]] if view == "with" else [r["paint"] for r in rows]
                summary[view] = (statistics.median(paints), max(paints))
            browser.close()
    for view, (median, worst) in summary.items():
        print(
            f"answer to painted overlay, {view} the 3D view (cached clicks): median {median:.0f} ms, max {worst:.0f} ms"
        )


if __name__ == "__main__":
    main()
