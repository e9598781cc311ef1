"""napari dock widget: the fastsam3d engine in-process on an image layer.

Include/exclude points go into a points layer (the mode buttons choose the sign), a rectangle in
a shapes layer becomes a 3D box (its in-plane extent, ``box depth`` mm through the slices), the
result is a labels layer with one label per object, the uncertainty an image layer. Every
interaction that may run the image encoder goes to a worker thread, so the first (encoder)
pass never blocks the UI (a busy bar shows meanwhile); clicks inside a cached ROI run at once. Layer axes are the volume's (i, j, k) voxel axes; a volume opened with
*Open volume…* keeps its full geometry for export.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from qtpy.QtWidgets import (
    QComboBox, QDoubleSpinBox, QFileDialog, QHBoxLayout, QLabel, QProgressBar, QPushButton, QVBoxLayout, QWidget,
)

from ..io import Volume, read_volume
from ..session import Session

POINTS = "FastSAM3D prompts"
LABELS = "FastSAM3D labels"
BOXES = "FastSAM3D boxes"
UNCERTAINTY = "FastSAM3D uncertainty"


class FastSAM3DWidget(QWidget):
    """Interactive segmentation of the selected image layer (see module docstring)."""

    def __init__(self, napari_viewer, model: str = "default") -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.session: Session | None = None
        self.model_name = model
        self.positive = True
        self.busy = False
        self.last_latency_ms = float("nan")
        self._known_points = 0

        self.model_box = QComboBox()
        self.model_box.setEditable(True)
        self.model_box.addItems([model] + [m for m in ("fastsam3d", "sam-med3d-turbo") if m != model])
        self.layer_box = QComboBox()
        self.start_button = QPushButton("Start on layer")
        self.open_button = QPushButton("Open volume…")
        self.include_button = QPushButton("Include")
        self.exclude_button = QPushButton("Exclude")
        for button in (self.include_button, self.exclude_button):
            button.setCheckable(True)
        self.include_button.setChecked(True)
        self.new_button = QPushButton("New object")
        self.undo_button = QPushButton("Undo")
        self.redo_button = QPushButton("Redo")
        self.uncertainty_button = QPushButton("Uncertainty")
        self.export_button = QPushButton("Export…")
        self.box_depth = QDoubleSpinBox()
        self.box_depth.setRange(1.0, 500.0)
        self.box_depth.setValue(40.0)
        self.box_depth.setSuffix(" mm box depth")
        self.progress = QProgressBar()
        self.progress.setRange(0, 0)  # busy indicator
        self.progress.hide()
        self.status = QLabel("Pick an image layer and press Start.")
        self.status.setWordWrap(True)

        layout = QVBoxLayout(self)
        layout.addWidget(QLabel("Model (name or checkpoint):"))
        layout.addWidget(self.model_box)
        layout.addWidget(self.layer_box)
        layout.addWidget(self.start_button)
        layout.addWidget(self.open_button)
        for row in ((self.include_button, self.exclude_button), (self.new_button, self.undo_button, self.redo_button),
                    (self.uncertainty_button, self.export_button)):
            line = QHBoxLayout()
            for button in row:
                line.addWidget(button)
            layout.addLayout(line)
        layout.addWidget(self.box_depth)
        layout.addWidget(self.progress)
        layout.addWidget(self.status)
        layout.addStretch()

        self.start_button.clicked.connect(lambda: self.start())
        self.open_button.clicked.connect(self._open_dialog)
        self.include_button.clicked.connect(lambda: self.set_mode(True))
        self.exclude_button.clicked.connect(lambda: self.set_mode(False))
        self.new_button.clicked.connect(self.new_object)
        self.undo_button.clicked.connect(lambda: self._run(lambda s: s.undo()))
        self.redo_button.clicked.connect(lambda: self._run(lambda s: s.redo()))
        self.uncertainty_button.clicked.connect(self.show_uncertainty)
        self.export_button.clicked.connect(self._export_dialog)
        self.viewer.layers.events.inserted.connect(self._refresh_layers)
        self.viewer.layers.events.removed.connect(self._refresh_layers)
        self._refresh_layers()

    # --- set-up -------------------------------------------------------------------------

    def _refresh_layers(self, event=None) -> None:
        current = self.layer_box.currentText()
        names = [layer.name for layer in self.viewer.layers if layer.__class__.__name__ == "Image" and layer.name != UNCERTAINTY]
        self.layer_box.clear()
        self.layer_box.addItems(names)
        if current in names:
            self.layer_box.setCurrentText(current)

    def open_volume(self, path: str | Path):
        """Read a volume with its geometry and add it as an image layer (voxel axes i, j, k)."""
        volume = read_volume(path)
        layer = self.viewer.add_image(volume.array, name=Path(path).name, scale=tuple(volume.spacing),
                                      metadata={"fastsam3d_volume": volume})
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
        layer = self.viewer.layers[name]
        volume = layer.metadata.get("fastsam3d_volume")
        if volume is None:
            volume = Volume(np.asarray(layer.data), np.asarray(layer.scale[-3:], dtype=float),
                            np.asarray(layer.translate[-3:], dtype=float), np.eye(3))
        model = self.model_box.currentText().strip() or "default"
        if self.session is None or model != self.model_name:
            self.session = Session(model)
            self.model_name = model
        self.session.set_image(volume)
        self.session.add_object()
        scale = layer.scale[-3:]
        for layer_name_ in (POINTS, LABELS, BOXES, UNCERTAINTY):
            if layer_name_ in self.viewer.layers:
                self.viewer.layers.remove(layer_name_)
        # the layer shows the session's own label map (no copy): an interaction only needs a refresh
        self.labels_layer = self.viewer.add_labels(self.session.labels, name=LABELS, scale=scale, opacity=0.5)
        self.boxes_layer = self.viewer.add_shapes(name=BOXES, ndim=3, scale=scale, edge_color="yellow", face_color="transparent")
        self.points_layer = self.viewer.add_points(np.empty((0, 3)), name=POINTS, ndim=3, scale=scale, size=4,
                                                   face_color="lime")
        self.points_layer.mode = "add"
        self._known_points = 0
        self.points_layer.events.data.connect(self._on_points)
        self.boxes_layer.events.data.connect(self._on_boxes)
        self.status.setText(f"{volume.shape} voxels; click include/exclude points (model: {model})")

    # --- prompts ----------------------------------------------------------------------

    def set_mode(self, positive: bool) -> None:
        self.positive = positive
        self.include_button.setChecked(positive)
        self.exclude_button.setChecked(not positive)
        if hasattr(self, "points_layer"):
            self.points_layer.current_face_color = "lime" if positive else "red"

    def _on_points(self, event=None) -> None:
        if self.busy:  # picked up when the running interaction is done
            return
        data = self.points_layer.data
        if len(data) <= self._known_points:
            self._known_points = len(data)
            return
        new = [tuple(point) for point in data[self._known_points :]]
        self._known_points = len(data)
        positive = self.positive
        cached = not any(self.session.needs_encoder(p) for p in new)
        self._run(lambda s: [s.add_click(p, positive) for p in new], in_worker=not cached)

    def _on_boxes(self, event=None) -> None:
        if not len(self.boxes_layer.data):
            return
        corners = np.asarray(self.boxes_layer.data[-1])  # a rectangle drawn on one slice: 4 x 3 voxel points
        low, high = corners.min(0), corners.max(0)
        flat = int(np.argmin(high - low))
        depth = self.box_depth.value() / 2 / float(self.session.volume.spacing[flat])
        low[flat] -= depth
        high[flat] += depth
        shape = np.array(self.session.volume.shape) - 1
        low, high = np.clip(low, 0, shape), np.clip(high, 0, shape)
        self._run(lambda s: s.set_box(low, high))

    def new_object(self) -> None:
        if self.session is not None:
            label = self.session.add_object()
            self.status.setText(f"object {label}: add points")

    def click(self, point, positive: bool = True) -> None:
        """Programmatic click (voxel index), as if placed in the points layer."""
        self.set_mode(positive)
        self.points_layer.add(np.asarray(point, dtype=float)[None])

    # --- running ----------------------------------------------------------------------

    def _run(self, action, in_worker: bool = True) -> None:
        """Run ``action(session)`` and update the labels layer: in a worker thread when it may run
        the encoder (the UI stays responsive), at once when the embedding is cached (~20 ms)."""
        from napari.qt.threading import create_worker

        if self.session is None or self.busy:
            return
        started = time.perf_counter()

        def work():
            action(self.session)
            return self.session.changed_region

        if not in_worker:
            try:
                self._show(work(), started)
            except Exception as error:  # noqa: BLE001 - shown in the widget, as from the worker
                self._failed(error)
            return
        self.busy = True
        self.progress.show()

        worker = create_worker(work)
        worker.returned.connect(lambda result: self._show(result, started))
        worker.errored.connect(self._failed)
        worker.finished.connect(self._done)
        self.worker = worker
        worker.start()

    def _show(self, changed, started: float) -> None:
        if self.labels_layer.data is not self.session.labels:  # the session widened its label type
            self.labels_layer.data = self.session.labels
        elif changed is not None:
            self.labels_layer.refresh()
        self.last_latency_ms = 1e3 * (time.perf_counter() - started)
        t = self.session.timings
        self.status.setText(f"{self.last_latency_ms:.0f} ms (encoder {1e3 * t.encoder:.0f}, decoder {1e3 * t.decoder:.0f}, "
                            f"paste {1e3 * t.paste:.0f})")

    def _failed(self, error: Exception) -> None:
        self.status.setText(f"error: {error}")

    def _done(self) -> None:
        self.busy = False
        self.progress.hide()
        if len(self.points_layer.data) > self._known_points:  # points placed while busy
            self._on_points()

    def show_uncertainty(self) -> None:
        if self.session is None:
            return
        result = self.session.uncertainty(samples=8)
        values = result.full("entropy", self.session.volume.shape)
        if UNCERTAINTY in self.viewer.layers:
            self.viewer.layers[UNCERTAINTY].data = values
        else:
            self.viewer.add_image(values, name=UNCERTAINTY, scale=self.labels_layer.scale, colormap="magma",
                                  blending="additive", opacity=0.6, contrast_limits=(0, 1))

    def export(self, path: str | Path) -> Path:
        """Write the label map (.nii.gz, .nrrd, .mha) with the source geometry, atomically."""
        return self.session.save_labels(path)

    def _export_dialog(self) -> None:
        if self.session is None:
            return
        path, _ = QFileDialog.getSaveFileName(self, "Export labels", "labels.nii.gz", "Label maps (*.nii.gz *.nrrd *.mha)")
        if path:
            self.status.setText(f"wrote {self.export(path)}")
