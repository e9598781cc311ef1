"""The napari plugin: open a volume, click, see the labels layer, screenshot, export, undo."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from fastsam3d.io import read_volume, write_volume
from fastsam3d.session import Session

from .conftest import IntensityModel
from .test_session import sphere_volume

napari = pytest.importorskip("napari", reason="pip install 'fastsam3d[napari]' (scripts/install.sh does)")
if not os.environ.get("DISPLAY"):
    pytest.skip("napari needs a display with OpenGL: install Xvfb (.ci/run does)", allow_module_level=True)

SCREENSHOT = Path(__file__).resolve().parents[1] / "docs" / "napari-widget.png"


def test_widget_click_labels_screenshot_export_undo(make_napari_viewer, qtbot, tmp_path):
    from fastsam3d.napari import FastSAM3DWidget

    viewer = make_napari_viewer(show=True)
    volume, truth = sphere_volume()
    write_volume(volume, tmp_path / "sphere.nii.gz")
    widget = FastSAM3DWidget(viewer)
    viewer.window.add_dock_widget(widget, name="FastSAM3D")
    widget.session = Session(IntensityModel(), device="cpu")  # stand-in model: exact, no weights to load
    widget.model_name = widget.model_box.currentText()
    layer = widget.open_volume(tmp_path / "sphere.nii.gz")
    widget.start(layer.name)
    centre = tuple(int(v) for v in np.argwhere(truth).mean(0).round())
    viewer.dims.set_point(0, centre[0] * volume.spacing[0])  # show the slice (axis 0) through the click

    widget.click(centre, positive=True)
    qtbot.waitUntil(lambda: not widget.busy and widget.labels_layer.data.any(), timeout=60_000)
    labels = widget.labels_layer.data
    assert labels[centre] == 1
    assert 2 * ((labels > 0) & truth).sum() / ((labels > 0).sum() + truth.sum()) > 0.9
    widget.labels_layer.visible = False
    plain = viewer.screenshot(canvas_only=True)
    widget.labels_layer.visible = True
    overlay = viewer.screenshot(canvas_only=True)
    changed = np.abs(overlay[..., :3].astype(int) - plain[..., :3].astype(int)).sum(-1) > 60
    assert changed.sum() > 500  # the labels are drawn on the canvas
    if os.environ.get("FASTSAM3D_DOCS_SCREENSHOT"):
        viewer.screenshot(path=str(SCREENSHOT), canvas_only=False)

    exported = read_volume(widget.export(tmp_path / "labels.nrrd"))
    np.testing.assert_array_equal(exported.array, labels)
    np.testing.assert_allclose(exported.direction, volume.direction, atol=1e-6)  # the source geometry, oblique
    widget.undo_button.click()
    qtbot.waitUntil(lambda: not widget.busy and not widget.labels_layer.data.any(), timeout=60_000)
    assert widget.last_latency_ms > 0
