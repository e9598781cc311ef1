"""The napari widget's controls and their layout (the widget's ``setupUi``: no behaviour here)."""

from __future__ import annotations

from qtpy.QtWidgets import (
    QComboBox,
    QDoubleSpinBox,
    QHBoxLayout,
    QLabel,
    QListWidget,
    QProgressBar,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from .layers import WINDOWS


def setup_ui(widget: QWidget, model: str) -> None:
    """Create the widget's controls as its attributes (``model_box``, ``include_button``, ...) and lay them out."""
    widget.model_box = QComboBox()
    widget.model_box.setEditable(True)  # a checkpoint path may be typed in
    fill_models(widget.model_box, model)
    widget.layer_box = QComboBox()
    widget.start_button = QPushButton("Start on layer")
    widget.open_button = QPushButton("Open volume…")
    widget.include_button = QPushButton("Include (I)")
    widget.exclude_button = QPushButton("Exclude (E)")
    for button in (widget.include_button, widget.exclude_button):
        button.setCheckable(True)
    widget.include_button.setChecked(True)
    widget.new_button = QPushButton("New object (N)")
    widget.undo_button = QPushButton("Undo")
    widget.redo_button = QPushButton("Redo")
    widget.undo_button.setToolTip("Ctrl+Z")
    widget.redo_button.setToolTip("Ctrl+Y or Ctrl+Shift+Z")
    widget.uncertainty_button = QPushButton("Uncertainty")
    widget.export_button = QPushButton("Export…")
    widget.objects_list = QListWidget()
    widget.objects_list.setMaximumHeight(110)
    widget.window_box = QComboBox()
    widget.window_box.addItems(["auto", *WINDOWS])
    widget.box_depth = QDoubleSpinBox()
    widget.box_depth.setRange(1.0, 500.0)
    widget.box_depth.setValue(40.0)
    widget.box_depth.setSuffix(" mm box depth")
    widget.progress = QProgressBar()
    widget.progress.setRange(0, 0)  # busy indicator
    widget.progress.hide()
    widget.status = QLabel("Open a volume (or pick an image layer) and press Start.")
    widget.status.setWordWrap(True)

    layout = QVBoxLayout(widget)
    layout.addWidget(QLabel("Model (name or checkpoint):"))
    layout.addWidget(widget.model_box)
    layout.addWidget(widget.layer_box)
    layout.addWidget(widget.start_button)
    layout.addWidget(widget.open_button)
    for row in (
        (widget.include_button, widget.exclude_button),
        (widget.new_button, widget.undo_button, widget.redo_button),
        (widget.uncertainty_button, widget.export_button),
    ):
        line = QHBoxLayout()
        for button in row:
            line.addWidget(button)
        layout.addLayout(line)
    layout.addWidget(QLabel("Objects:"))
    layout.addWidget(widget.objects_list)
    layout.addWidget(QLabel("Window:"))
    layout.addWidget(widget.window_box)
    layout.addWidget(widget.box_depth)
    layout.addWidget(widget.progress)
    layout.addWidget(widget.status)
    layout.addStretch()


def fill_models(box: QComboBox, default: str) -> None:
    """The default model, then every official 3D and 2D model (2D ones run slice by slice and
    start from a box); those whose weights are not here are listed greyed out with the command
    that fetches them."""
    try:
        from ..hub import official_models

        rows = [r for r in official_models() if r["runnable"] and r["name"] != default]
    except Exception:  # noqa: BLE001 - the catalogue is optional here
        rows = []
    box.addItem(default, default)
    for row in rows:
        text = row["name"] + (" (2D, box first)" if row["dims"] == 2 else "")
        text += "" if row["cached"] else f" (not downloaded: fastsam3d weights fetch {row['name']})"
        box.addItem(text, row["name"])
        if not row["cached"]:
            item = box.model().item(box.count() - 1)
            item.setEnabled(False)
