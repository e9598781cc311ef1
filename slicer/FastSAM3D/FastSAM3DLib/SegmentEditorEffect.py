"""FastSAM3D as a Segment Editor effect: clicks and strokes in the slice views segment into the selected segment.

Point tool: left click includes (Include mode) or excludes (Exclude mode, or Shift+click); Box tool:
two clicks at opposite corners on one slice (a slab for 3D models, the flat box for 2D models);
Scribble and Lasso tools: a left-button drag, drawn as Slicer's Paint and Draw effects draw, sent on
release as a scribble or a lasso (signed by the Include / Exclude mode) in world RAS. Each
Slicer segment is one object on the server. Every answer is applied to the selected segment only in
the box the server says changed, through ``modifySelectedSegmentByLabelmap`` with an extent, so the
Segment Editor's masking (editable area, intensity range) and overwrite settings apply, and each
applied answer is one Segment Editor undo step. Requests run off the GUI thread (a progress bar
and a Cancel button show meanwhile; every request gives up after the logic's timeout); keys (I, E,
P, B, S, L, Esc) act only while this effect is active, through ``processInteractionEvents``.
Session lifecycle: segmenting another volume closes the previous session, a heartbeat keeps the open
one alive, *Sessions* lists the server's sessions to resume or close, and a session the server lost
(404) says how to go on. All HTTP, geometry and label bookkeeping is in ``logic.py`` (tested outside
Slicer against a real server); this file is the thin Slicer glue.
"""

import os

import qt
import vtk
from SegmentEditorEffects import AbstractScriptedSegmentEditorEffect

import slicer
from FastSAM3DLib.logic import Background, FastSAM3DLogic, ServerError, SessionGone, segment_region
from FastSAM3DLib.sessionpanel import SessionPanel
from FastSAM3DLib.views import StrokeLine, world_ijk_to_ras

POLL_MS = 50
HEARTBEAT_MS = 60_000  # the server closes a session idle for --idle-minutes (default 30)
TOOLS = {"p": "point", "b": "box", "s": "scribble", "l": "lasso"}


class SegmentEditorEffect(SessionPanel, AbstractScriptedSegmentEditorEffect):
    def __init__(self, scriptedEffect):
        scriptedEffect.name = "FastSAM3D"
        scriptedEffect.perSegment = True
        scriptedEffect.requireSegments = True
        AbstractScriptedSegmentEditorEffect.__init__(self, scriptedEffect)
        self.logic = None
        self.volume_node = None
        self.objects = {}  # segment id -> server object label
        self.positive = True  # Include / Exclude mode
        self.tool = "point"
        self.corner = None
        self.stroke = None  # RAS points of the scribble / lasso being drawn
        self.feedback = {}  # slice widget -> StrokeLine
        self.pending = None  # (Background call in flight, done, late)
        self.abandoned = []  # cancelled calls still running: (call, late)
        self.beat = None  # the last heartbeat's Background call
        self.timer = qt.QTimer()
        self.timer.setInterval(POLL_MS)
        self.timer.connect("timeout()", self._poll)
        self.heartbeatTimer = qt.QTimer()
        self.heartbeatTimer.setInterval(HEARTBEAT_MS)
        self.heartbeatTimer.connect("timeout()", self._heartbeat)

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
            "<b>I</b> / <b>E</b>: include / exclude mode. <b>P</b> point tool: left click (Shift+click: the other "
            "sign); <b>B</b> box: two corners on one slice; <b>S</b> scribble and <b>L</b> lasso: drag with the left "
            "button, sent on release; <b>Esc</b>: cancel the box or stroke. The selected segment is updated where the "
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
        self.modeButtons = {}
        for choices, choose in (
            ((("include", "Include (I)"), ("exclude", "Exclude (E)")), lambda m: self.setSign(m == "include")),
            (tuple((tool, f"{tool.title()} ({key.upper()})") for key, tool in TOOLS.items()), self.setTool),
        ):
            row = qt.QHBoxLayout()
            for mode, text in choices:
                button = qt.QPushButton(text)
                button.checkable = True
                button.connect("clicked()", lambda mode=mode, choose=choose: choose(mode))
                row.addWidget(button)
                self.modeButtons[mode] = button
            form.addRow(row)
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
        self.sessionBox = qt.QComboBox()
        self.sessionBox.toolTip = "the server's open and saved sessions (Refresh lists them)"
        sessions = qt.QHBoxLayout()
        for text, slot in (
            ("Refresh", self.refreshSessions),
            ("Resume", self.resumeSession),
            ("Close", self.closeSession),
        ):
            button = qt.QPushButton(text)
            button.connect("clicked()", slot)
            sessions.addWidget(button)
        form.addRow("Sessions:", self.sessionBox)
        form.addRow(sessions)
        self.progress = qt.QProgressBar()
        self.progress.setRange(0, 0)
        self.progress.hide()
        self.cancelButton = qt.QPushButton("Cancel")
        self.cancelButton.toolTip = "stop waiting for the running request"
        self.cancelButton.hide()
        self.cancelButton.connect("clicked()", self.cancel)
        self.statusLabel = qt.QLabel("not connected")
        self.statusLabel.wordWrap = True
        form.addRow(self.progress, self.cancelButton)
        form.addRow(self.statusLabel)
        self.scriptedEffect.addOptionsWidget(form)
        self.connectButton.connect("clicked()", self.connect)
        self.undoButton.connect("clicked()", lambda: self.submit(lambda label: self.logic.undo(label)))
        self.redoButton.connect("clicked()", lambda: self.submit(lambda label: self.logic.redo(label)))
        self.setSign(True)
        self.setTool("point")

    def setSign(self, positive):
        """Include (True) or Exclude mode; the box has no sign, so it gives way to the point tool."""
        self.positive = positive
        if self.tool == "box":
            self.setTool("point")
        self._check_buttons()

    def setTool(self, tool):
        self.tool, self.corner, self.stroke = tool, None, None
        self._check_buttons()

    def _check_buttons(self):
        for name, button in self.modeButtons.items():
            button.checked = name in (self.tool, "include" if self.positive else "exclude")

    def connect(self):
        qt.QSettings().setValue("FastSAM3D/url", self.urlEdit.text)
        self.logic = FastSAM3DLogic(self.urlEdit.text, self.keyEdit.text or None)
        self._forget()
        self._start(self.logic.models, self._connected, "connecting…")

    def _forget(self):
        """No session any more (another server, or the server lost it): the next prompt uploads the volume again."""
        self.volume_node, self.objects = None, {}
        self.heartbeatTimer.stop()

    def _connected(self, models):
        self.modelBox.clear()
        for model in models:
            self.modelBox.addItem(
                f"{model['name']} ({model['dims']}D)" if model["available"] else f"{model['name']} (not installed)",
                model["name"],
            )
        self.statusLabel.text = f"connected to {self.logic.url}"

    # --- requests off the GUI thread ---------------------------------------------------

    def _start(self, function, done, text, late=None):
        """Run ``function`` in a background call, then ``done(result)`` on this thread; ``late(result)`` is
        what a cancelled call's result still needs when it arrives (None: nothing)."""
        if self.pending is not None:
            self.statusLabel.text = "busy: wait for the running request (or Cancel it)"
            return
        self.pending = (Background(function), done, late)
        self.progress.show()
        self.cancelButton.show()
        self.statusLabel.text = text
        self.timer.start()

    def cancel(self):
        """Stop waiting for the running request (a thread cannot be killed: its late result is handled quietly)."""
        if self.pending is None:
            return
        call, _, late = self.pending
        self.abandoned.append((call, late))
        self.pending = None
        self.progress.hide()
        self.cancelButton.hide()
        self.statusLabel.text = "cancelled: the server may still finish it (Undo prompt reverts a finished prompt)"

    def _poll(self):
        for call, late in [entry for entry in self.abandoned if entry[0].poll()]:
            self.abandoned.remove((call, late))
            if call.error is None and late is not None:
                late(call.result)
        if self.pending is not None and self.pending[0].poll():
            call, done, _ = self.pending
            self.pending = None
            self.progress.hide()
            self.cancelButton.hide()
            if call.error is None:
                done(call.result)
            elif isinstance(call.error, SessionGone):
                self._forget()
                self.statusLabel.text = str(call.error)
            else:
                message = str(call.error) if isinstance(call.error, (ServerError, ValueError)) else repr(call.error)
                self.statusLabel.text = f"error: {message}"
        if self.pending is None and not self.abandoned:
            self.timer.stop()

    def submit(self, request):
        """Run ``request(label)`` for the selected segment's object, then apply its changed region."""
        if self.logic is None:
            self.statusLabel.text = "connect to a server first"
            return
        volume, segment_id = self._selection()
        if volume is None or not segment_id:
            self.statusLabel.text = "select a source volume and a segment"
            return
        model = self.modelBox.currentData if hasattr(self.modelBox, "currentData") else None
        if volume is not self.volume_node:
            array, matrix, name = slicer.util.arrayFromVolume(volume).copy(), world_ijk_to_ras(volume), volume.GetName()
            self.volume_node, self.objects = volume, {}
            self.ijk_to_ras = matrix

            def opened():  # the logic closes the previous volume's session first (DELETE)
                return self.logic.open_volume(array, matrix, name, model=model or None)

            def uploaded(answer):
                self.heartbeatTimer.start()
                self.submit(request)

            def cancelled(answer):  # an upload cancelled: its session is not wanted
                if self.logic.session is not None and self.logic.session["id"] == answer["id"]:
                    self.logic.session = None  # not when a newer upload finished first
                Background(self.logic.close_session, answer["id"])

            self._start(opened, uploaded, "uploading the volume…", late=cancelled)
            if self.pending is None:
                self.volume_node = None
            return
        segment_name = self.scriptedEffect.parameterSetNode().GetSegmentationNode()
        segment_name = segment_name.GetSegmentation().GetSegment(segment_id).GetName()

        def call():
            if segment_id not in self.objects:
                self.objects[segment_id] = self.logic.add_object(segment_name)
            label = self.objects[segment_id]
            return label, request(label)

        self._start(call, self._apply, "segmenting…", late=self._apply)

    def _selection(self):
        """The Segment Editor's source volume node and selected segment id."""
        parameters = self.scriptedEffect.parameterSetNode()
        volume = (
            parameters.GetSourceVolumeNode()
            if hasattr(parameters, "GetSourceVolumeNode")
            else parameters.GetMasterVolumeNode()
        )
        return volume, parameters.GetSelectedSegmentID()

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
            if callerInteractor.GetControlKey() or key not in ("i", "e", "escape", *TOOLS):
                return False
            if key == "escape":
                self.corner = None
                self._end_stroke(viewWidget)
            elif key in ("i", "e"):
                self.setSign(key == "i")
            else:
                self.setTool(TOOLS[key])
            return True
        if self.stroke is not None and eventId == vtk.vtkCommand.MouseMoveEvent:
            self._add_stroke_point(callerInteractor, viewWidget)
            return True
        if self.stroke is not None and eventId == vtk.vtkCommand.LeftButtonReleaseEvent:
            self._add_stroke_point(callerInteractor, viewWidget)
            self._send_stroke(self._end_stroke(viewWidget))
            return True
        if eventId != vtk.vtkCommand.LeftButtonPressEvent or callerInteractor.GetControlKey():
            return False
        if self.tool in ("scribble", "lasso"):
            self.stroke = []
            self._add_stroke_point(callerInteractor, viewWidget)
            return True
        ras = self._ras(callerInteractor, viewWidget)
        if self.tool == "box":
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
        positive = self.positive != bool(callerInteractor.GetShiftKey())
        self.submit(lambda label: self.logic.click(ras, positive, label))
        return True

    def _ras(self, interactor, view):
        x, y = interactor.GetEventPosition()
        point = self.scriptedEffect.xyToRas(qt.QPoint(x, y), view)  # a QVector3D, as Slicer's own effects call it
        return [point.x(), point.y(), point.z()] if hasattr(point, "x") else [float(v) for v in point]

    def _add_stroke_point(self, interactor, view):
        """One more point of the drag, in RAS (a repeated position adds nothing), and its line on screen."""
        ras = self._ras(interactor, view)
        if not self.stroke or ras != self.stroke[-1]:
            self.stroke.append(ras)
            if view not in self.feedback:
                self.feedback[view] = StrokeLine(self.scriptedEffect, view)
            self.feedback[view].add(interactor.GetEventPosition(), closed=self.tool == "lasso")

    def _end_stroke(self, view):
        points, self.stroke = self.stroke, None
        if view in self.feedback:
            self.feedback[view].clear()
        return points

    def _send_stroke(self, points):
        kind, positive = self.tool, self.positive
        if len(points) < (3 if kind == "lasso" else 2):
            self.statusLabel.text = f"{kind}: drag with the left button held down to draw it"
            return
        self.submit(lambda label: self.logic.stroke(kind, points, positive, label))

    def deactivate(self):
        self.corner = self.stroke = None
        for view, line in self.feedback.items():
            line.remove(view)
        self.feedback = {}
