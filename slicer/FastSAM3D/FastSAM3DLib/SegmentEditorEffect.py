"""FastSAM3D as a Segment Editor effect: clicks in the slice views segment into the selected segment.

Left click: include point; Shift+left click (or the Exclude mode): exclude point; Box mode: two
clicks at opposite corners on one slice (a slab for 3D models, the flat box for 2D models). Each
Slicer segment is one object on the server. Every answer is applied to the selected segment only in
the box the server says changed, through ``modifySelectedSegmentByLabelmap`` with an extent, so the
Segment Editor's masking (editable area, intensity range) and overwrite settings apply, and each
applied answer is one Segment Editor undo step. Requests run off the GUI thread (a progress bar
shows meanwhile); keys (I, E, B, Esc) act only while this effect is active, through
``processInteractionEvents``. All HTTP, geometry and label bookkeeping is in ``logic.py`` (tested
outside Slicer against a real server); this file is the thin Slicer glue.
"""

import os

import qt
import vtk
from SegmentEditorEffects import AbstractScriptedSegmentEditorEffect

import slicer
from FastSAM3DLib.logic import Background, FastSAM3DLogic, ServerError, segment_region

POLL_MS = 50


def world_ijk_to_ras(volume_node):
    """The volume's IJK-to-RAS matrix in world coordinates (parent transforms applied, if linear)."""
    matrix = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(matrix)
    transform = volume_node.GetParentTransformNode()
    if transform is not None:
        if not transform.IsTransformToWorldLinear():
            raise ValueError("the volume has a non-linear parent transform: harden it first")
        to_world = vtk.vtkMatrix4x4()
        transform.GetMatrixTransformToWorld(to_world)
        vtk.vtkMatrix4x4.Multiply4x4(to_world, matrix, matrix)
    return slicer.util.arrayFromVTKMatrix(matrix)


class SegmentEditorEffect(AbstractScriptedSegmentEditorEffect):
    def __init__(self, scriptedEffect):
        scriptedEffect.name = "FastSAM3D"
        scriptedEffect.perSegment = True
        scriptedEffect.requireSegments = True
        AbstractScriptedSegmentEditorEffect.__init__(self, scriptedEffect)
        self.logic = None
        self.volume_node = None
        self.objects = {}  # segment id -> server object label
        self.mode = "include"
        self.corner = None
        self.pending = None  # Background call in flight
        self.timer = qt.QTimer()
        self.timer.setInterval(POLL_MS)
        self.timer.connect("timeout()", self._poll)

    def clone(self):
        import qSlicerSegmentationsEditorEffectsPythonQt as effects

        cloned = effects.qSlicerSegmentEditorScriptedEffect(None)
        cloned.setPythonSource(__file__.replace("\\", "/"))
        return cloned

    def icon(self):
        path = os.path.join(os.path.dirname(__file__), "..", "Resources", "Icons", "FastSAM3D.png")
        return qt.QIcon(path) if os.path.exists(path) else qt.QIcon()

    def helpText(self):
        return (
            "<html>Interactive 3D segmentation through a <tt>fastsam3d serve</tt> server.<br>"
            "<b>Left click</b>: include point; <b>Shift+click</b> or <b>E</b>: exclude; <b>B</b>: box by two corners "
            "on one slice; <b>I</b>: include mode; <b>Esc</b>: cancel the box. The selected segment is updated where the "
            "model changed it, honouring masking and overwrite; Ctrl+Z undoes like any other effect.</html>"
        )

    # --- options ------------------------------------------------------------------------

    def setupOptionsFrame(self):
        form = qt.QFormLayout()
        self.urlEdit = qt.QLineEdit(qt.QSettings().value("FastSAM3D/url", "http://127.0.0.1:8000"))
        self.keyEdit = qt.QLineEdit()
        self.keyEdit.echoMode = qt.QLineEdit.Password
        self.modelBox = qt.QComboBox()
        self.connectButton = qt.QPushButton("Connect")
        form.addRow("Server:", self.urlEdit)
        form.addRow("API key:", self.keyEdit)
        form.addRow(self.connectButton, self.modelBox)
        modes = qt.QHBoxLayout()
        self.modeButtons = {}
        for mode, text in (("include", "Include (I)"), ("exclude", "Exclude (E)"), ("box", "Box (B)")):
            button = qt.QPushButton(text)
            button.checkable = True
            button.connect("clicked()", lambda mode=mode: self.setMode(mode))
            modes.addWidget(button)
            self.modeButtons[mode] = button
        form.addRow(modes)
        self.depthBox = qt.QDoubleSpinBox()
        self.depthBox.setRange(0.0, 500.0)
        self.depthBox.suffix = " mm (0: as wide as the box)"
        form.addRow("Box depth:", self.depthBox)
        row = qt.QHBoxLayout()
        self.undoButton = qt.QPushButton("Undo prompt")
        self.redoButton = qt.QPushButton("Redo prompt")
        self.undoButton.toolTip = "step the model back (the segment is updated as a new, undoable edit)"
        row.addWidget(self.undoButton)
        row.addWidget(self.redoButton)
        form.addRow(row)
        self.progress = qt.QProgressBar()
        self.progress.setRange(0, 0)
        self.progress.hide()
        self.statusLabel = qt.QLabel("not connected")
        self.statusLabel.wordWrap = True
        form.addRow(self.progress)
        form.addRow(self.statusLabel)
        self.scriptedEffect.addOptionsWidget(form)
        self.connectButton.connect("clicked()", self.connect)
        self.undoButton.connect("clicked()", lambda: self.submit(lambda label: self.logic.undo(label)))
        self.redoButton.connect("clicked()", lambda: self.submit(lambda label: self.logic.redo(label)))
        self.setMode("include")

    def setMode(self, mode):
        self.mode = mode
        self.corner = None
        for name, button in self.modeButtons.items():
            button.checked = name == mode

    def connect(self):
        qt.QSettings().setValue("FastSAM3D/url", self.urlEdit.text)
        self.logic = FastSAM3DLogic(self.urlEdit.text, self.keyEdit.text or None)
        self.volume_node = None
        self.objects = {}
        self._start(self.logic.models, self._connected, "connecting…")

    def _connected(self, models):
        self.modelBox.clear()
        for model in models:
            self.modelBox.addItem(
                f"{model['name']} ({model['dims']}D)" if model["available"] else f"{model['name']} (not installed)",
                model["name"],
            )
        self.statusLabel.text = f"connected to {self.logic.url}"

    # --- requests off the GUI thread ---------------------------------------------------

    def _start(self, function, done, text):
        if self.pending is not None:
            self.statusLabel.text = "busy: wait for the running request"
            return
        self.pending = (Background(function), done)
        self.progress.show()
        self.statusLabel.text = text
        self.timer.start()

    def _poll(self):
        call, done = self.pending
        if not call.poll():
            return
        self.timer.stop()
        self.pending = None
        self.progress.hide()
        if call.error is not None:
            message = str(call.error) if isinstance(call.error, (ServerError, ValueError)) else repr(call.error)
            self.statusLabel.text = f"error: {message}"
            return
        done(call.result)

    def submit(self, request):
        """Run ``request(label)`` for the selected segment's object, then apply its changed region."""
        if self.logic is None:
            self.statusLabel.text = "connect to a server first"
            return
        parameters = self.scriptedEffect.parameterSetNode()
        volume = (
            parameters.GetSourceVolumeNode()
            if hasattr(parameters, "GetSourceVolumeNode")
            else parameters.GetMasterVolumeNode()
        )
        segment_id = parameters.GetSelectedSegmentID()
        if volume is None or not segment_id:
            self.statusLabel.text = "select a source volume and a segment"
            return
        model = self.modelBox.currentData if hasattr(self.modelBox, "currentData") else None
        if volume is not self.volume_node:
            array, matrix, name = slicer.util.arrayFromVolume(volume).copy(), world_ijk_to_ras(volume), volume.GetName()
            self.volume_node, self.objects = volume, {}
            self.ijk_to_ras = matrix

            def opened():
                return self.logic.open_volume(array, matrix, name, model=model or None)

            self._start(opened, lambda answer: self.submit(request), "uploading the volume…")
            return
        segment_name = parameters.GetSegmentationNode().GetSegmentation().GetSegment(segment_id).GetName()

        def call():
            if segment_id not in self.objects:
                self.objects[segment_id] = self.logic.add_object(segment_name)
            label = self.objects[segment_id]
            return label, request(label)

        self._start(call, self._apply, "segmenting…")

    def _apply(self, outcome):
        label, answer = outcome
        part = segment_region(answer, self.logic.labels, label)
        timings = self.logic.last_timings
        self.statusLabel.text = f"server {timings.get('server', 0):.0f} ms"
        if part is None:
            return
        extent, mask = part
        modifier = slicer.vtkOrientedImageData()
        modifier.SetExtent(*extent)
        modifier.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
        matrix = vtk.vtkMatrix4x4()
        for r in range(4):
            for c in range(4):
                matrix.SetElement(r, c, float(self.ijk_to_ras[r, c]))
        modifier.SetImageToWorldMatrix(matrix)
        from vtk.util import numpy_support

        numpy_support.vtk_to_numpy(modifier.GetPointData().GetScalars()).reshape(mask.shape)[:] = mask
        self.scriptedEffect.saveStateForUndo()
        self.scriptedEffect.modifySelectedSegmentByLabelmap(
            modifier, slicer.qSlicerSegmentEditorAbstractEffect.ModificationModeSet, list(extent)
        )

    # --- interaction (only while this effect is active) --------------------------------

    def processInteractionEvents(self, callerInteractor, eventId, viewWidget):
        if viewWidget.className() != "qMRMLSliceWidget":
            return False
        if eventId == vtk.vtkCommand.KeyPressEvent:
            key = callerInteractor.GetKeySym().lower()
            if callerInteractor.GetControlKey() or key not in ("i", "e", "b", "escape"):
                return False
            if key == "escape":
                self.corner = None
            else:
                self.setMode({"i": "include", "e": "exclude", "b": "box"}[key])
            return True
        if eventId != vtk.vtkCommand.LeftButtonPressEvent or callerInteractor.GetControlKey():
            return False
        x, y = callerInteractor.GetEventPosition()
        point = self.scriptedEffect.xyToRas(qt.QPoint(x, y), viewWidget)  # a QVector3D, as Slicer's own effects call it
        ras = [point.x(), point.y(), point.z()] if hasattr(point, "x") else [float(v) for v in point]
        if self.mode == "box":
            if self.corner is None:
                self.corner = ras
                self.statusLabel.text = "box: click the opposite corner"
                return True
            first, self.corner = self.corner, None
            depth = self.depthBox.value or None

            def box(label):
                a, b = self.logic.flat_box(self.ijk_to_ras, first, ras, depth)
                return self.logic.box(a, b, label)

            self.submit(box)
            return True
        positive = self.mode == "include" and not callerInteractor.GetShiftKey()
        self.submit(lambda label: self.logic.click(ras, positive, label))
        return True

    def deactivate(self):
        self.corner = None
