"""End to end in headless Chromium: open a volume in the viewer, click the object, see the overlay,
download the segmentation. Needs Debian's chromium (``.ci/run`` installs it) and Playwright."""

from __future__ import annotations

import shutil

import nibabel as nib
import numpy as np
import pytest

from fastsam3d.io import Volume, lps_to_ras, write_volume
from fastsam3d.server.app import create_app
from fastsam3d.server.store import ServerSettings

from .conftest import IntensityModel, running_server
from .test_session import sphere_volume

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--use-angle=swiftshader", "--enable-unsafe-swiftshader",
    "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("viewer-data")
    oblique, truth = sphere_volume()
    # axis-aligned but stored L->R, P->A (LPS identity): NiiVue reorients it, clicks must still land right
    volume = Volume(oblique.array, oblique.spacing, oblique.origin, np.eye(3))
    write_volume(volume, folder / "sphere.nii.gz")
    app = create_app(ServerSettings(data_dir=folder), model=IntensityModel())
    with running_server(app) as url:
        yield url + "/", volume, truth


def pink_pixels(png: bytes) -> int:
    """Pixels of the first object's colour (230, 25, 75) blended half over grey: pink, unlike the
    pure red crosshair (green near 0) and the grey image."""
    import matplotlib.image as mpimg
    import io

    rgb = (mpimg.imread(io.BytesIO(png))[..., :3] * 255).astype(int)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    return int(((r > 150) & (g > 60) & (r - g > 60) & (r - b > 40)).sum())


def test_click_in_the_browser_segments_and_downloads(server, tmp_path):
    if CHROMIUM is None:
        pytest.skip("Debian chromium is not installed (.ci/run installs it: apt-get install chromium)")
    playwright = pytest.importorskip("playwright.sync_api", reason="pip install playwright (the test extra)")
    url, volume, truth = server
    centre = [int(v) for v in np.argwhere(truth).mean(0).round()]
    target = lps_to_ras(volume.index_to_world(np.array([centre], float))[0]).tolist()
    errors: list[str] = []
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1200, "height": 800})
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.goto(url)
        page.wait_for_selector("body[data-status=idle]", timeout=60_000)
        page.click("#open")
        page.wait_for_selector("body[data-status=ready]", timeout=60_000)
        before = pink_pixels(page.locator("#gl").screenshot())
        position = page.evaluate(
            """(mm) => { const nv = window.fastsam3d.nv; const frac = nv.mm2frac(mm);
                nv.scene.crosshairPos = frac; nv.drawScene();
                const at = nv.frac2canvasPos(frac); return [at[0] / devicePixelRatio, at[1] / devicePixelRatio]; }""",
            target,
        )
        box = page.locator("#gl").bounding_box()
        page.mouse.click(box["x"] + position[0], box["y"] + position[1])
        page.wait_for_function("Number(document.body.dataset.labelled || 0) > 0 && document.body.dataset.status === 'ready'",
                               timeout=120_000)
        clicked = page.evaluate("window.fastsam3d.state.lastPoint")
        after = pink_pixels(page.locator("#gl").screenshot(path=str(tmp_path / "viewer.png")))
        print(f"overlay pixels before/after the click: {before}/{after}")
        assert "round trip" in page.locator("#latency").inner_text()
        with page.expect_download() as download:
            page.click("button[data-format='nii.gz']")
        download.value.save_as(tmp_path / "seg.nii.gz")
        browser.close()
    assert not errors, errors
    assert np.linalg.norm(np.array(clicked) - target) < 2.0  # the click reached the server where it was aimed (mm)
    assert after > before + 5000, (before, after)  # the overlay is drawn (before: only crosshair edges)
    labels = np.asarray(nib.load(tmp_path / "seg.nii.gz").dataobj)
    assert labels.shape == truth.shape and labels[tuple(centre)] == 1
    assert 2 * (labels.astype(bool) & truth).sum() / (labels.astype(bool).sum() + truth.sum()) > 0.9
