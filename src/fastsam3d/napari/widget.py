"""napari dock widget: the fastsam3d engine in-process on an image layer.

Include / exclude points go into a points layer in napari world coordinates (the mode buttons or
I / E choose the sign); each is mapped to the image's voxels through the image layer's full
transform (scale, translate, rotation / direction, affine; see :mod:`.layers`), so a translated,
anisotropic or oblique volume is clicked where it is drawn. In the shapes layer a rectangle becomes
a 3D box (its in-plane extent, ``box depth`` mm through the slices), a path a scribble and a polygon
a lasso (both signed by the include / exclude mode). The result is a labels layer with one label per
object (the object list selects the active one and shows its volume in ml); undo / redo also remove
and restore the points and shapes of the step (:mod:`.prompt_history`). Work that may run the image
encoder, and the uncertainty, run in worker threads (``napari.qt.threading``) with a busy bar; a
click whose ROI embedding is cached runs at once (decoder only, ~20 ms: a thread hop and an extra
redraw cost more than that).
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import numpy as np
from qtpy.QtWidgets import QFileDialog, QListWidgetItem, QWidget

from ..engine import Session, open_session, warm_up
from ..engine.answers import Interaction, Timings
from ..errors import FastSAM3DError
from ..io import is_ct, read_volume
from .layers import (
    WINDOWS,
    image_layer_data,
    index_to_world,
    layer_transform,
    layer_volume,
    session_view,
    window_limits,
    world_to_index,
    world_to_indices,
)
from .panel import setup_ui
from .prompt_history import EXCLUDE, INCLUDE, PromptHistory, Step

POINTS = "FastSAM3D prompts"
LABELS = "FastSAM3D labels"
SHAPES = "FastSAM3D shapes"
UNCERTAINTY = "FastSAM3D uncertainty"
STROKES = {"path": "scribble", "line": "scribble", "polygon": "lasso"}  # shape_type -> session verb


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
        self.history: PromptHistory | None = None

        setup_ui(self, model)

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
        # slider: superior; rows: anterior at the top; columns: patient's left on the right
        self.viewer.dims.order = (0, 1, 2)
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
            with contextlib.suppress(FastSAM3DError, RuntimeError, ValueError):  # else only the first click is slower
                warm_up(self.session.model, self.session.device)  # the first click is then not a cold one
            self.model_name = model
        self.session.set_image(volume)
        self.session.add_object()
        for layer_name_ in (POINTS, LABELS, SHAPES, UNCERTAINTY):
            if layer_name_ in self.viewer.layers:
                self.viewer.layers.remove(layer_name_)
        # the labels layer shows the session's own label map (a view, no copy): an interaction only needs a refresh
        self._labels_source = self.session.labels
        self.labels_layer = self.viewer.add_labels(
            session_view(self.session.labels, layer), name=LABELS, opacity=0.5, **layer_transform(layer)
        )
        # prompts and shapes live in world coordinates (identity transform), mapped through the image layer
        self.shapes_layer = self.viewer.add_shapes(name=SHAPES, ndim=3, face_color="transparent")
        self.shapes_layer.current_face_color = "transparent"
        self.points_layer = self.viewer.add_points(
            np.empty((0, 3)),
            name=POINTS,
            ndim=3,
            size=3 * float(min(volume.spacing)),
            face_color="lime",
            border_color="black",
        )
        self.points_layer.mode = "add"
        self.history = PromptHistory(self.points_layer, self.shapes_layer)
        self.set_mode(self.positive)
        self.points_layer.events.data.connect(self._on_points)
        self.shapes_layer.events.data.connect(self._on_shapes)
        for key, action in (
            ("i", lambda: self.set_mode(True)),
            ("e", lambda: self.set_mode(False)),
            ("n", self.new_object),
            ("Control-z", self.undo),
            ("Control-y", self.redo),
            ("Control-Shift-z", self.redo),
        ):
            for target in (self.points_layer, self.labels_layer, self.shapes_layer):
                target.bind_key(key, lambda _layer, action=action: action(), overwrite=True)
        self.window_box.setCurrentText("CT soft tissue" if is_ct(volume.array) else "auto")
        self.set_window(self.window_box.currentText())
        self._refresh_objects()
        self.viewer.layers.selection.active = self.points_layer
        self.status.setText(
            f"{volume.shape} voxels; click points, draw a rectangle (box), a path (scribble) or a polygon (lasso) (model: {model})"
        )

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
            item = QListWidgetItem(f"{label}: {obj.name} ({self.session.volume_ml(label):.2f} ml)")
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
            self.status.setText(f"object {label}: add points, a box, a scribble or a lasso")

    # --- prompts ----------------------------------------------------------------------

    def set_mode(self, positive: bool) -> None:
        self.positive = positive
        self.include_button.setChecked(positive)
        self.exclude_button.setChecked(not positive)
        if self.history is not None:
            # napari recolours the selected points / shapes with the current colour: deselect first, so
            # placed ones keep the colour of their own sign (and a selection left stale by undo is not indexed)
            self.points_layer.selected_data = set()
            self.points_layer.current_face_color = INCLUDE if positive else EXCLUDE
            self.shapes_layer.selected_data = set()
            self.shapes_layer.current_edge_color = INCLUDE if positive else EXCLUDE

    def _on_points(self, event=None) -> None:
        if self.busy or self.history.syncing:  # new points are picked up when the running interaction is done
            return
        if not self.history.pending_points():  # points deleted by hand: forget them
            self.history.points_deleted()
            return
        positive, label = self.positive, self.session.active
        step, world = self.history.new_points(label, positive)
        new = [world_to_index(self.image_layer, point) for point in world]
        cached = not any(self.session.needs_encoder(p) for p in new)
        self._run(lambda s: s.add_clicks(new, [positive] * len(new), label=label), in_worker=not cached, step=step)

    def _on_shapes(self, event=None) -> None:
        """A shape finished in the shapes layer: its ``shape_type`` picks the prompt."""
        action = getattr(event, "action", "added")
        if self.history.syncing or action not in ("added", "removed"):
            return
        if action == "removed":  # deleted by hand: forget it (the session keeps its prompt)
            self.history.shapes_deleted(event.data_indices)
            return
        if self.busy or not self.history.pending_shapes():  # picked up when the running interaction is done
            return
        positive, label = self.positive, self.session.active
        step, vertices, shape_type = self.history.new_shape(label)
        indices = world_to_indices(self.image_layer, vertices, self.session.volume.shape)
        if shape_type == "rectangle":
            self._box(indices, step)
        elif shape_type in STROKES:
            verb = STROKES[shape_type]
            # a polygon drawn on one slice keeps one slice index after rounding (the engine checks it)
            self._run(lambda s: getattr(s, f"add_{verb}")(indices, positive, label=label), step=step)
        else:
            self.history.refused(step)
            self.status.setText(f"a {shape_type} is no prompt: draw a rectangle, a path or a polygon")

    def _box(self, corners: np.ndarray, step: Step) -> None:
        # a rectangle drawn on one slice: its voxel corners; for a 3D model its thin axis gets the box
        # depth, a 2D model takes it flat (it segments that slice and propagates)
        low, high = corners.min(0), corners.max(0)
        if self.session.dims == 3:
            flat = int(np.argmin((high - low) * self.session.volume.spacing))
            depth = self.box_depth.value() / 2 / float(self.session.volume.spacing[flat])
            low[flat] -= depth
            high[flat] += depth
        shape = np.array(self.session.volume.shape) - 1
        low, high = np.clip(low, 0, shape), np.clip(high, 0, shape)
        label = step.label
        self._run(lambda s: s.set_box(low, high, label=label), step=step)

    def click(self, point, positive: bool = True) -> None:
        """Programmatic click at a session voxel index (i, j, k), as if placed in the points layer."""
        self.set_mode(positive)
        self.points_layer.add(index_to_world(self.image_layer, point)[None])

    def undo(self) -> None:
        self._run(lambda s: s.undo(), history=-1)

    def redo(self) -> None:
        self._run(lambda s: s.redo(), history=+1)

    # --- running ----------------------------------------------------------------------

    def _run(self, action, in_worker: bool = True, step: Step | None = None, history: int = 0) -> None:
        """Run ``action(session)`` and update the labels layer: in a worker thread when it may run
        the encoder (the UI stays responsive), at once when the embedding is cached (~20 ms)."""
        from napari.qt.threading import create_worker

        if self.session is None or self.busy:
            return
        started = time.perf_counter()

        def work():  # (an Interaction or None: nothing to undo / redo, the error)
            try:
                return action(self.session), None
            except Exception as error:  # noqa: BLE001 - handed back: the status line shows it, not napari's dialog
                return None, error

        def shown(outcome):
            result, error = outcome
            if error is not None:
                failed(error)
                return
            if step is not None:
                self.history.done(step)
            elif history and result is not None:
                self.history.move(self.session.active, history)
            self._show(result, started)

        def failed(error):
            if step is not None:
                self.history.refused(step)
            self._failed(error)

        if not in_worker:
            shown(work())
            return
        self.busy = True
        self.progress.show()
        worker = create_worker(work)
        worker.returned.connect(shown)
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
        self._refresh_objects()
        self.status.setText(
            f"{self.last_latency_ms:.0f} ms (encoder {1e3 * t.encoder:.0f}, decoder {1e3 * t.decoder:.0f}, "
            f"paste {1e3 * t.paste:.0f})"
        )

    def _failed(self, error: Exception) -> None:
        self.status.setText(f"error: {error}")

    def _done(self) -> None:
        self.busy = False
        self.progress.hide()
        if self.history is None:
            return
        if self.history.pending_points():  # points placed while busy
            self._on_points()
        elif self.history.pending_shapes() and not getattr(self.shapes_layer, "_is_creating", False):
            self._on_shapes()  # a shape finished while busy (not one still being drawn)

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
