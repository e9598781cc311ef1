"""napari dock widget: the fastsam3d engine in-process on an image layer.

Include / exclude points go into a points layer in napari world coordinates (the mode buttons or
I / E choose the sign); each is mapped to the image's voxels through the image layer's full
transform (scale, translate, rotation / direction, affine; see :mod:`.layers`), so a translated,
anisotropic or oblique volume is clicked where it is drawn. A rectangle in the shapes layer becomes
a 3D box (its in-plane extent, ``box depth`` mm through the slices). The result is a labels layer
with one label per object (the object list selects the active one); undo / redo also remove and
restore the points of the step. Work that may run the image encoder, and the uncertainty, run in
worker threads (``napari.qt.threading``) with a busy bar; a click whose ROI embedding is cached
runs at once (decoder only, ~20 ms: a thread hop and an extra redraw cost more than that).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from qtpy.QtWidgets import (
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QProgressBar,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from ..engine import Session, open_session
from ..engine.answers import Interaction, Timings
from ..io import read_volume
from .layers import (
    WINDOWS,
    image_layer_data,
    index_to_world,
    is_ct,
    layer_transform,
    layer_volume,
    session_view,
    window_limits,
    world_to_index,
)

POINTS = "FastSAM3D prompts"
LABELS = "FastSAM3D labels"
BOXES = "FastSAM3D boxes"
UNCERTAINTY = "FastSAM3D uncertainty"
INCLUDE, EXCLUDE = (0.0, 0.9, 0.0, 1.0), (1.0, 0.1, 0.1, 1.0)


class FastSAM3DWidget(QWidget):
    """Interactive segmentation of the selected image layer (see module docstring)."""

    def __init__(self, napari_viewer, model: str = "default") -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.session: Session | None = None
        self.image_layer = None
        self.model_name = model
        self.positive = True
        self.busy = False
        self.last_latency_ms = float("nan")
        self._known_points = 0
        self._rows: list[tuple[int, int, bool]] = []  # per point of the points layer: (object, step id, positive)
        self._steps: dict[
            int, dict[str, list]
        ] = {}  # object -> {"done": [step], "undone": [step]}; step = (id, points)
        self._next_step = 0
        self._syncing = False

        self.model_box = QComboBox()
        self.model_box.setEditable(True)  # a checkpoint path may be typed in
        self._fill_models(model)
        self.layer_box = QComboBox()
        self.start_button = QPushButton("Start on layer")
        self.open_button = QPushButton("Open volume…")
        self.include_button = QPushButton("Include (I)")
        self.exclude_button = QPushButton("Exclude (E)")
        for button in (self.include_button, self.exclude_button):
            button.setCheckable(True)
        self.include_button.setChecked(True)
        self.new_button = QPushButton("New object (N)")
        self.undo_button = QPushButton("Undo")
        self.redo_button = QPushButton("Redo")
        self.undo_button.setToolTip("Ctrl+Z")
        self.redo_button.setToolTip("Ctrl+Y or Ctrl+Shift+Z")
        self.uncertainty_button = QPushButton("Uncertainty")
        self.export_button = QPushButton("Export…")
        self.objects_list = QListWidget()
        self.objects_list.setMaximumHeight(110)
        self.window_box = QComboBox()
        self.window_box.addItems(["auto", *WINDOWS])
        self.box_depth = QDoubleSpinBox()
        self.box_depth.setRange(1.0, 500.0)
        self.box_depth.setValue(40.0)
        self.box_depth.setSuffix(" mm box depth")
        self.progress = QProgressBar()
        self.progress.setRange(0, 0)  # busy indicator
        self.progress.hide()
        self.status = QLabel("Open a volume (or pick an image layer) and press Start.")
        self.status.setWordWrap(True)

        layout = QVBoxLayout(self)
        layout.addWidget(QLabel("Model (name or checkpoint):"))
        layout.addWidget(self.model_box)
        layout.addWidget(self.layer_box)
        layout.addWidget(self.start_button)
        layout.addWidget(self.open_button)
        for row in (
            (self.include_button, self.exclude_button),
            (self.new_button, self.undo_button, self.redo_button),
            (self.uncertainty_button, self.export_button),
        ):
            line = QHBoxLayout()
            for button in row:
                line.addWidget(button)
            layout.addLayout(line)
        layout.addWidget(QLabel("Objects:"))
        layout.addWidget(self.objects_list)
        layout.addWidget(QLabel("Window:"))
        layout.addWidget(self.window_box)
        layout.addWidget(self.box_depth)
        layout.addWidget(self.progress)
        layout.addWidget(self.status)
        layout.addStretch()

        self.start_button.clicked.connect(lambda: self.start())
        self.open_button.clicked.connect(self._open_dialog)
        self.include_button.clicked.connect(lambda: self.set_mode(True))
        self.exclude_button.clicked.connect(lambda: self.set_mode(False))
        self.new_button.clicked.connect(self.new_object)
        self.undo_button.clicked.connect(self.undo)
        self.redo_button.clicked.connect(self.redo)
        self.uncertainty_button.clicked.connect(self.show_uncertainty)
        self.export_button.clicked.connect(self._export_dialog)
        self.objects_list.currentRowChanged.connect(self._on_object_selected)
        self.window_box.currentTextChanged.connect(self.set_window)
        self.viewer.layers.events.inserted.connect(self._refresh_layers)
        self.viewer.layers.events.removed.connect(self._refresh_layers)
        self._refresh_layers()

    # --- set-up -------------------------------------------------------------------------

    def _fill_models(self, default: str) -> None:
        """The default model, then every official 3D and 2D model (2D ones run slice by slice and
        start from a box); those whose weights are not here are listed greyed out with the command
        that fetches them."""
        try:
            from ..hub import official_models

            rows = [r for r in official_models() if r["runnable"] and r["name"] != default]
        except Exception:  # noqa: BLE001 - the catalogue is optional here
            rows = []
        self.model_box.addItem(default, default)
        for row in rows:
            text = row["name"] + (" (2D, box first)" if row["dims"] == 2 else "")
            text += "" if row["cached"] else f" (not downloaded: fastsam3d weights fetch {row['name']})"
            self.model_box.addItem(text, row["name"])
            if not row["cached"]:
                item = self.model_box.model().item(self.model_box.count() - 1)
                item.setEnabled(False)

    def _chosen_model(self) -> str:
        text = self.model_box.currentText().strip()
        index = self.model_box.findText(text)
        return (self.model_box.itemData(index) if index >= 0 else text) or "default"

    def _refresh_layers(self, event=None) -> None:
        current = self.layer_box.currentText()
        names = [
            layer.name
            for layer in self.viewer.layers
            if layer.__class__.__name__ == "Image" and layer.name != UNCERTAINTY
        ]
        self.layer_box.clear()
        self.layer_box.addItems(names)
        if current in names:
            self.layer_box.setCurrentText(current)

    def open_volume(self, path: str | Path):
        """Read a volume (file or DICOM folder) with its geometry and add it as an image layer:
        placed by its full affine, radiological axial view, the CT window for a CT."""
        data, kwargs = image_layer_data(read_volume(path), Path(path).name)
        layer = self.viewer.add_image(data, **kwargs)
        self.viewer.dims.ndisplay = 2
        self.viewer.dims.order = (
            0,
            1,
            2,
        )  # slider: superior; rows: anterior at the top; columns: patient's left on the right
        self.viewer.reset_view()
        self.layer_box.setCurrentText(layer.name)
        return layer

    def _open_dialog(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Open volume", "", "Volumes (*.nii *.nii.gz *.nrrd *.mha *.mhd)")
        if path:
            self.open_volume(path)

    def start(self, layer_name: str | None = None) -> None:
        """Load the model (once) and start a session on an image layer."""
        name = layer_name or self.layer_box.currentText()
        if name not in self.viewer.layers:
            self.status.setText("no image layer selected")
            return
        layer = self.image_layer = self.viewer.layers[name]
        volume = layer_volume(layer)
        model = self._chosen_model()
        if self.session is None or model != self.model_name:
            self.session = open_session(model)
            self.model_name = model
        self.session.set_image(volume)
        self.session.add_object()
        for layer_name_ in (POINTS, LABELS, BOXES, UNCERTAINTY):
            if layer_name_ in self.viewer.layers:
                self.viewer.layers.remove(layer_name_)
        # the labels layer shows the session's own label map (a view, no copy): an interaction only needs a refresh
        self._labels_source = self.session.labels
        self.labels_layer = self.viewer.add_labels(
            session_view(self.session.labels, layer), name=LABELS, opacity=0.5, **layer_transform(layer)
        )
        # prompts and boxes live in world coordinates (identity transform), mapped through the image layer
        self.boxes_layer = self.viewer.add_shapes(name=BOXES, ndim=3, edge_color="yellow", face_color="transparent")
        self.points_layer = self.viewer.add_points(
            np.empty((0, 3)),
            name=POINTS,
            ndim=3,
            size=3 * float(min(volume.spacing)),
            face_color="lime",
            border_color="black",
        )
        self.points_layer.mode = "add"
        self._known_points = 0
        self._rows, self._steps, self._next_step = [], {}, 0
        self.points_layer.events.data.connect(self._on_points)
        self.boxes_layer.events.data.connect(self._on_boxes)
        for key, action in (
            ("i", lambda: self.set_mode(True)),
            ("e", lambda: self.set_mode(False)),
            ("n", self.new_object),
            ("Control-z", self.undo),
            ("Control-y", self.redo),
            ("Control-Shift-z", self.redo),
        ):
            for target in (self.points_layer, self.labels_layer, self.boxes_layer):
                target.bind_key(key, lambda _layer, action=action: action(), overwrite=True)
        self.window_box.setCurrentText("CT soft tissue" if is_ct(volume.array) else "auto")
        self.set_window(self.window_box.currentText())
        self._refresh_objects()
        self.viewer.layers.selection.active = self.points_layer
        self.status.setText(f"{volume.shape} voxels; click include/exclude points (model: {model})")

    def set_window(self, name: str) -> None:
        """Apply a window preset to the image layer ("auto": its 0.5-99.5 percentiles)."""
        if self.image_layer is None:
            return
        if name in WINDOWS:
            self.image_layer.contrast_limits = window_limits(name)
        else:
            sample = np.asarray(self.image_layer.data).ravel()[:: max(1, self.image_layer.data.size // 1_000_000)]
            low, high = np.percentile(sample, [0.5, 99.5])
            self.image_layer.contrast_limits = (float(low), float(max(high, low + 1e-6)))

    # --- objects ------------------------------------------------------------------------

    def _refresh_objects(self) -> None:
        from qtpy.QtGui import QColor

        self.objects_list.blockSignals(True)
        self.objects_list.clear()
        for row, (label, obj) in enumerate(self.session.objects.items()):
            item = QListWidgetItem(f"{label}: {obj.name}")
            rgba = np.asarray(self.labels_layer.get_color(label), dtype=float)
            item.setForeground(QColor(*(int(255 * c) for c in rgba[:3])))
            self.objects_list.addItem(item)
            if label == self.session.active:
                self.objects_list.setCurrentRow(row)
        self.objects_list.blockSignals(False)

    def _on_object_selected(self, row: int) -> None:
        if self.session is not None and 0 <= row < len(self.session.objects):
            self.session.select(list(self.session.objects)[row])
            self.status.setText(f"object {self.session.active} selected")

    def new_object(self) -> None:
        if self.session is not None:
            label = self.session.add_object()
            self._refresh_objects()
            self.status.setText(f"object {label}: add points")

    # --- prompts ----------------------------------------------------------------------

    def set_mode(self, positive: bool) -> None:
        self.positive = positive
        self.include_button.setChecked(positive)
        self.exclude_button.setChecked(not positive)
        if hasattr(self, "points_layer"):
            # napari recolours the selected points with the current colour: deselect first, so placed
            # points keep the colour of their own sign (and a selection left stale by undo is not indexed)
            self.points_layer.selected_data = set()
            self.points_layer.current_face_color = INCLUDE if positive else EXCLUDE

    def _on_points(self, event=None) -> None:
        if self.busy or self._syncing:  # new points are picked up when the running interaction is done
            return
        data = self.points_layer.data
        if len(data) <= self._known_points:  # points deleted by hand: forget them
            self._known_points = len(data)
            self._rows = self._rows[: len(data)]
            return
        new = [world_to_index(self.image_layer, point) for point in data[self._known_points :]]
        positive, label = self.positive, self.session.active
        step = self._next_step
        self._next_step += 1
        self._rows += [(label, step, positive)] * len(new)
        self._known_points = len(data)
        self._paint_points()
        cached = not any(self.session.needs_encoder(p) for p in new)
        self._run(
            lambda s: s.add_clicks(new, [positive] * len(new), label=label),
            in_worker=not cached,
            step=(label, step, [np.asarray(data[-len(new) :])]),
        )

    def _on_boxes(self, event=None) -> None:
        if not len(self.boxes_layer.data) or self._syncing:
            return
        # a rectangle drawn on one slice: 4 world points -> voxel corners; for a 3D model its thin axis
        # gets the box depth, a 2D model takes it flat (it segments that slice and propagates)
        corners = np.array([world_to_index(self.image_layer, p) for p in np.asarray(self.boxes_layer.data[-1])])
        low, high = corners.min(0), corners.max(0)
        if self.session.dims == 3:
            flat = int(np.argmin((high - low) * self.session.volume.spacing))
            depth = self.box_depth.value() / 2 / float(self.session.volume.spacing[flat])
            low[flat] -= depth
            high[flat] += depth
        shape = np.array(self.session.volume.shape) - 1
        low, high = np.clip(low, 0, shape), np.clip(high, 0, shape)
        label = self.session.active
        self._run(lambda s: s.set_box(low, high, label=label), step=(label, None, []))

    def click(self, point, positive: bool = True) -> None:
        """Programmatic click at a session voxel index (i, j, k), as if placed in the points layer."""
        self.set_mode(positive)
        self.points_layer.add(index_to_world(self.image_layer, point)[None])

    def undo(self) -> None:
        self._run(lambda s: s.undo(), history=-1)

    def redo(self) -> None:
        self._run(lambda s: s.redo(), history=+1)

    def _paint_points(self) -> None:
        if len(self._rows) == len(self.points_layer.data):
            colours = np.array([INCLUDE if positive else EXCLUDE for _, _, positive in self._rows]).reshape(-1, 4)
            self._syncing = True
            try:
                self.points_layer.face_color = colours
            finally:
                self._syncing = False

    def _record(self, step, history: int, changed: bool) -> None:
        """Keep the points layer in step with the session's undo history."""
        label = self.session.active
        steps = self._steps.setdefault(label, {"done": [], "undone": []})
        if history == 0:
            steps["done"].append(step)
            steps["undone"].clear()
            return
        if not changed:
            return
        source, target = (steps["done"], steps["undone"]) if history < 0 else (steps["undone"], steps["done"])
        if not source:
            return
        moved = source.pop()
        target.append(moved)
        _, step_id, points = moved
        self._syncing = True
        try:
            if history < 0 and step_id is not None:
                keep = [row for row, (_, sid, _) in enumerate(self._rows) if sid != step_id]
                removed = [row for row, (_, sid, _) in enumerate(self._rows) if sid == step_id]
                positive = [self._rows[row][2] for row in removed]
                moved[2][:] = [np.asarray(self.points_layer.data[removed]), positive]
                self.points_layer.data = np.asarray(self.points_layer.data)[keep].reshape(-1, 3)
                self._rows = [self._rows[row] for row in keep]
            elif history > 0 and step_id is not None and points:
                coords, positive = points
                self.points_layer.data = np.concatenate([np.asarray(self.points_layer.data).reshape(-1, 3), coords])
                self._rows += [(moved[0], step_id, p) for p in positive]
            self._known_points = len(self.points_layer.data)
            self.points_layer.selected_data = set()  # indices into the old data
        finally:
            self._syncing = False
        self._paint_points()

    # --- running ----------------------------------------------------------------------

    def _run(self, action, in_worker: bool = True, step=None, history: int = 0) -> None:
        """Run ``action(session)`` and update the labels layer: in a worker thread when it may run
        the encoder (the UI stays responsive), at once when the embedding is cached (~20 ms)."""
        from napari.qt.threading import create_worker

        if self.session is None or self.busy:
            return
        started = time.perf_counter()

        def work():
            return action(self.session)  # an Interaction; None: nothing to undo / redo

        def shown(result):
            if step is not None or history:
                self._record(step, history, result is not None if history else True)
            self._show(result, started)

        if not in_worker:
            try:
                shown(work())
            except Exception as error:  # noqa: BLE001 - shown in the widget, as from the worker
                self._failed(error)
            return
        self.busy = True
        self.progress.show()
        worker = create_worker(work)
        worker.returned.connect(shown)
        worker.errored.connect(self._failed)
        worker.finished.connect(self._done)
        self.worker = worker
        worker.start()

    def _show(self, result: Interaction | None, started: float) -> None:
        if self._labels_source is not self.session.labels:  # the session widened its label type
            self._labels_source = self.session.labels
            self.labels_layer.data = session_view(self.session.labels, self.image_layer)
        elif result is not None and result.changed_region is not None:
            self.labels_layer.refresh()
        self.last_latency_ms = 1e3 * (time.perf_counter() - started)
        t = result.timings if result is not None else Timings()
        self.status.setText(
            f"{self.last_latency_ms:.0f} ms (encoder {1e3 * t.encoder:.0f}, decoder {1e3 * t.decoder:.0f}, "
            f"paste {1e3 * t.paste:.0f})"
        )

    def _failed(self, error: Exception) -> None:
        self.status.setText(f"error: {error}")

    def _done(self) -> None:
        self.busy = False
        self.progress.hide()
        if len(self.points_layer.data) > self._known_points:  # points placed while busy
            self._on_points()

    def show_uncertainty(self) -> None:
        """Entropy of the active object (bits), computed in a worker thread, shown as an image layer."""
        from napari.qt.threading import create_worker

        if self.session is None or self.busy:
            return
        self.busy = True
        self.progress.show()
        worker = create_worker(lambda: self.session.uncertainty(samples=8).full("entropy", self.session.volume.shape))
        worker.returned.connect(self._show_uncertainty)
        worker.errored.connect(self._failed)
        worker.finished.connect(self._done)
        self.worker = worker
        worker.start()

    def _show_uncertainty(self, entropy: np.ndarray) -> None:
        values = session_view(entropy, self.image_layer)
        if UNCERTAINTY in self.viewer.layers:
            self.viewer.layers[UNCERTAINTY].data = values
        else:
            self.viewer.add_image(
                values,
                name=UNCERTAINTY,
                colormap="magma",
                blending="additive",
                opacity=0.6,
                contrast_limits=(0, 1),
                **layer_transform(self.image_layer),
            )

    def export(self, path: str | Path) -> Path:
        """Write the label map (.nii.gz, .nrrd, .mha) with the source geometry, atomically."""
        return self.session.save_labels(path)

    def _export_dialog(self) -> None:
        if self.session is None:
            return
        path, _ = QFileDialog.getSaveFileName(
            self, "Export labels", "labels.nii.gz", "Label maps (*.nii.gz *.nrrd *.mha)"
        )
        if path:
            self.status.setText(f"wrote {self.export(path)}")
