"""The napari plugin: open a volume, click, see the labels layer, screenshot, export, undo; a
translated, anisotropic, oblique layer clicked where it is drawn; lassos and scribbles from the
shapes layer; the reader contribution."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from fastsam3d.clicks import dice
from fastsam3d.engine.session3d import Session
from fastsam3d.io import read_volume, write_volume

from ..helpers import BrightInBox, IntensityModel, ellipsoid_volume, rotation, sphere_volume

napari = pytest.importorskip(
    "napari", reason="napari not installed: pip install 'fastsam3d[napari]' (scripts/install.sh does)"
)
if not os.environ.get("DISPLAY"):
    pytest.skip("napari needs a display with OpenGL: install Xvfb (.ci/run does)", allow_module_level=True)

SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "napari-widget.png"


def make_widget(viewer):
    from fastsam3d.napari import FastSAM3DWidget

    widget = FastSAM3DWidget(viewer)
    viewer.window.add_dock_widget(widget, name="FastSAM3D")
    widget.session = Session(IntensityModel(), device="cpu")  # stand-in model: exact, no weights to load
    widget.model_name = widget._chosen_model()
    return widget


def test_widget_click_labels_screenshot_export_undo(make_napari_viewer, qtbot, tmp_path):
    from fastsam3d.napari.layers import index_to_world

    viewer = make_napari_viewer(show=True)
    volume, truth = sphere_volume()
    write_volume(volume, tmp_path / "sphere.nii.gz")
    widget = make_widget(viewer)
    layer = widget.open_volume(tmp_path / "sphere.nii.gz")
    widget.start(layer.name)
    centre = tuple(int(v) for v in np.argwhere(truth).mean(0).round())
    viewer.dims.set_point(0, index_to_world(layer, centre)[0])  # show the axial slice through the click

    widget.click(centre, positive=True)
    qtbot.waitUntil(lambda: not widget.busy and widget.session.labels.any(), timeout=60_000)
    labels = widget.session.labels
    assert labels[centre] == 1
    assert dice(labels > 0, truth) > 0.9
    widget.labels_layer.visible = False
    plain = viewer.screenshot(canvas_only=True)
    widget.labels_layer.visible = True
    overlay = viewer.screenshot(canvas_only=True)
    changed = np.abs(overlay[..., :3].astype(int) - plain[..., :3].astype(int)).sum(-1) > 60
    assert changed.sum() > 500  # the labels are drawn on the canvas, over the image
    if os.environ.get("FASTSAM3D_DOCS_SCREENSHOT"):
        viewer.screenshot(path=str(SCREENSHOT), canvas_only=False)

    exported = read_volume(widget.export(tmp_path / "labels.nrrd"))
    np.testing.assert_array_equal(exported.array, labels)
    np.testing.assert_allclose(exported.direction, volume.direction, atol=1e-6)  # the source geometry, oblique
    widget.undo_button.click()
    qtbot.waitUntil(lambda: not widget.busy and not widget.session.labels.any(), timeout=60_000)
    assert len(widget.points_layer.data) == 0  # the undone point is gone
    assert widget.last_latency_ms > 0


def test_translated_anisotropic_oblique_layer_is_clicked_where_drawn(make_napari_viewer, qtbot):
    """A layer placed by scale, translate and rotate (as a user or another reader sets them): a click at
    a voxel's world position reaches the engine as that voxel, which ends up inside the mask."""
    viewer = make_napari_viewer(show=False)
    shape, radius = (40, 70, 80), 9.0
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), -1)
    scale = np.array([3.0, 1.2, 0.8])
    centre = np.array([22, 30, 47])
    inside = np.linalg.norm((grid - centre) * scale, axis=-1) < radius * 2
    array = np.where(inside, 200.0, 40.0).astype(np.float32) + np.random.default_rng(0).normal(0, 5, shape).astype(
        np.float32
    )
    layer = viewer.add_image(
        array, name="oblique", scale=scale, translate=(-150.0, 60.0, 310.0), rotate=rotation(20, 15)
    )
    widget = make_widget(viewer)
    widget.start(layer.name)
    world = np.asarray(layer.data_to_world(centre.astype(float)))
    assert np.linalg.norm(world - centre * scale) > 100  # far from where a scale-only mapping would put it
    widget.points_layer.add(world[None])  # as a click in the viewer: world coordinates
    qtbot.waitUntil(lambda: not widget.busy and widget.session.labels.any(), timeout=60_000)
    assert widget.session.labels[tuple(centre)] == 1
    assert (widget.session.labels.astype(bool) & inside).sum() > 0.9 * inside.sum()
    np.testing.assert_allclose(widget.session.volume.spacing, scale, rtol=1e-6)

    # undo removes the point, redo brings it back; a second object from the list; Ctrl+Z-bound undo
    widget.undo()
    qtbot.waitUntil(lambda: not widget.busy and not widget.session.labels.any(), timeout=60_000)
    assert len(widget.points_layer.data) == 0
    widget.redo()
    qtbot.waitUntil(lambda: not widget.busy and widget.session.labels.any(), timeout=60_000)
    assert len(widget.points_layer.data) == 1
    np.testing.assert_allclose(widget.points_layer.data[0], world, atol=1e-6)
    widget.new_object()
    assert widget.objects_list.count() == 2 and widget.session.active == 2
    widget.objects_list.setCurrentRow(0)
    assert widget.session.active == 1

    # the uncertainty runs in a worker and lands on the layer's grid
    widget.show_uncertainty()
    qtbot.waitUntil(lambda: not widget.busy and "FastSAM3D uncertainty" in viewer.layers, timeout=60_000)
    assert viewer.layers["FastSAM3D uncertainty"].data.shape == array.shape


def test_a_2d_model_segments_from_a_box_drawn_on_one_slice(make_napari_viewer, qtbot):
    """A 2D model through the widget: a rectangle drawn on one axial slice is sent flat (no depth),
    segmented and propagated through the object's slices."""
    from fastsam3d.engine.session2d import SliceSession

    viewer = make_napari_viewer(show=False)
    volume, inside = ellipsoid_volume()
    array, inside = volume.array.transpose(2, 1, 0), inside.transpose(2, 1, 0)  # napari: slices on axis 0
    layer = viewer.add_image(array, name="ellipsoid", scale=volume.spacing[::-1])
    widget = make_widget(viewer)
    widget.session = SliceSession(BrightInBox(), device="cpu")  # a 2D stand-in
    widget.start(layer.name)
    where = np.argwhere(inside[10])
    (r0, c0), (r1, c1) = where.min(0), where.max(0)
    corners = np.array([[10, r0, c0], [10, r0, c1], [10, r1, c1], [10, r1, c0]], dtype=float)
    widget.shapes_layer.add_rectangles(np.array([layer.data_to_world(c) for c in corners]))
    qtbot.waitUntil(lambda: not widget.busy and widget.session.labels.any(), timeout=60_000)
    labels = widget.session.labels.astype(bool)
    assert np.nonzero(labels.any(axis=(1, 2)))[0].tolist() == list(range(6, 15))  # beyond the drawn slice
    assert dice(labels, inside) > 0.95


def test_reader_places_the_volume_and_picks_the_ct_window(tmp_path):
    from napari.layers import Image

    from fastsam3d.io import Volume
    from fastsam3d.napari.layers import REVERSE, index_to_world, world_to_index
    from fastsam3d.napari.reader import get_reader

    oblique, _ = sphere_volume()
    ras_stored = np.array([[0.0, 0.0, -1.0], [-1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])  # permuted and flipped, not oblique
    assert get_reader(str(tmp_path / "notes.txt")) is None and get_reader(str(tmp_path)) is None
    for name, direction in (("axis-aligned.nii.gz", ras_stored), ("oblique.nii.gz", oblique.direction)):
        ct = Volume(oblique.array * 10 - 1000, oblique.spacing, oblique.origin, direction)
        write_volume(ct, tmp_path / name)
        [(data, kwargs, kind)] = get_reader(str(tmp_path / name))(str(tmp_path / name))
        layer = Image(data, **kwargs)
        index = np.array([7.0, 11.0, 13.0])
        world = index_to_world(layer, index)
        np.testing.assert_allclose(
            world_to_index(layer, world), index, atol=1e-6
        )  # a click lands on the voxel drawn there
        assert data[tuple(np.round(layer.world_to_data(world)).astype(int))] == ct.array[7, 11, 13]
        if name.startswith("axis"):  # exact world position (LPS), and the data axes run along z, y, x
            np.testing.assert_allclose(REVERSE @ world, ct.index_to_world(index), atol=1e-3)
            assert (np.asarray(layer.scale) > 0).all()
        assert kind == "image" and kwargs["contrast_limits"] == (-160, 240)  # CT soft tissue


def test_reader_opens_a_dicom_folder():
    from fastsam3d.napari.reader import get_reader

    folder = Path.home() / ".cache" / "fastsam3d" / "totalsegmentator" / "reference_files" / "example_ct_dicom"
    if not folder.is_dir():
        pytest.skip("development data not fetched: run `fastsam3d data fetch` (scripts/install.sh does)")
    [(data, kwargs, kind)] = get_reader(str(folder))(str(folder))
    assert kind == "image" and data.ndim == 3 and kwargs["contrast_limits"] == (-160, 240)
    assert (np.asarray(kwargs["scale"]) > 0).all()


def test_exclude_after_an_undo_keeps_working(make_napari_viewer, qtbot):
    """Two points, undo, then E (key and button): the mode changes, no IndexError, the next point excludes."""
    viewer = make_napari_viewer(show=True)
    volume, truth = sphere_volume()
    layer = viewer.add_image(volume.array, name="sphere")
    widget = make_widget(viewer)
    widget.start(layer.name)
    centre = tuple(int(v) for v in np.argwhere(truth).mean(0).round())
    for point in (centre, (centre[0] + 3, *centre[1:])):
        widget.click(point, positive=True)
        qtbot.waitUntil(lambda: not widget.busy, timeout=60_000)
    assert len(widget.points_layer.data) == 2
    widget.undo()
    qtbot.waitUntil(lambda: not widget.busy and len(widget.points_layer.data) == 1, timeout=60_000)
    viewer.layers.selection.active = widget.points_layer
    qtbot.keyClick(viewer.window._qt_viewer.canvas.native, "e")
    assert not widget.positive
    widget.include_button.click()
    widget.exclude_button.click()
    assert not widget.positive and widget.exclude_button.isChecked()
    widget.points_layer.add(widget.points_layer.data[:1] + 1.0)  # a point placed in the viewer, now excluding
    qtbot.waitUntil(lambda: not widget.busy and len(widget.history.rows) == 2, timeout=60_000)
    assert [positive for _, _, positive in widget.history.rows] == [True, False]
    assert widget.session.objects[1].state.clicks[-1].positive is False


def test_polygon_is_a_lasso_and_path_a_scribble_with_undo_of_their_shapes(make_napari_viewer, qtbot):
    """A polygon in the shapes layer becomes a lasso, a path an exclude scribble (the mode's sign): the
    labels change, the object list shows the volume in ml, undo takes the shape out of the layer and redo
    puts it back; a polygon across slices is refused in the status line and its shape removed."""
    viewer = make_napari_viewer(show=False)
    volume, truth = sphere_volume()
    layer = viewer.add_image(volume.array, name="sphere")  # identity transform: world = voxel index
    widget = make_widget(viewer)
    widget.start(layer.name)
    c = np.argwhere(truth).mean(0).round().astype(int)
    square = np.array([[0, -4, -4], [0, -4, 4], [0, 4, 4], [0, 4, -4]], float) + c
    widget.shapes_layer.add([square], shape_type="polygon")  # as drawn with add_polygon on slice c[0]
    qtbot.waitUntil(lambda: not widget.busy and widget.session.labels.any(), timeout=60_000)
    assert widget.session.labels[tuple(c)] == 1 and widget.session.labels[tuple(c + [0, 3, -3])] == 1
    assert [prompt.kind for prompt in widget.session.objects[1].state.strokes] == ["lasso"]
    ml = widget.session.volume_ml(1)
    assert ml > 0 and f"({ml:.2f} ml)" in widget.objects_list.item(0).text()

    widget.undo()
    qtbot.waitUntil(lambda: not widget.busy and not widget.session.labels.any(), timeout=60_000)
    assert len(widget.shapes_layer.data) == 0
    assert "(0.00 ml)" in widget.objects_list.item(0).text()
    widget.redo()
    qtbot.waitUntil(lambda: not widget.busy and widget.session.labels.any(), timeout=60_000)
    assert len(widget.shapes_layer.data) == 1 and widget.shapes_layer.shape_type == ["polygon"]
    np.testing.assert_allclose(widget.shapes_layer.data[0], square)

    before = widget.session.labels.copy()
    widget.set_mode(False)
    path = np.array([c + [0, -6, 0], c + [0, 6, 0]], float)  # as drawn with add_path, beyond the volume too
    widget.shapes_layer.add([np.vstack([path, [c[0], 10_000, c[2]]])], shape_type="path")
    qtbot.waitUntil(lambda: not widget.busy and (widget.session.labels != before).any(), timeout=60_000)
    stroke = widget.session.objects[1].state.strokes[-1]
    assert stroke.kind == "scribble" and not stroke.positive
    assert widget.session.labels[tuple(c)] == 0  # the scribble's voxels are outside the object
    widget.undo()
    qtbot.waitUntil(lambda: not widget.busy and len(widget.shapes_layer.data) == 1, timeout=60_000)
    np.testing.assert_array_equal(widget.session.labels, before)

    across = square.copy()
    across[2, 0] += 3  # one vertex on another slice: no lasso
    widget.shapes_layer.add([across], shape_type="polygon")
    qtbot.waitUntil(lambda: not widget.busy and "error" in widget.status.text(), timeout=60_000)
    assert "slice" in widget.status.text() and len(widget.shapes_layer.data) == 1
    np.testing.assert_array_equal(widget.session.labels, before)
