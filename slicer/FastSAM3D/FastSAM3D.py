"""FastSAM3D: interactive 3D segmentation in 3D Slicer through a fastsam3d server.

Two ways in: the **FastSAM3D Segment Editor effect** (registered at start-up; segments into the
selected segment, honours masking / overwrite / undo; ``FastSAM3DLib/SegmentEditorEffect.py``), and
this module's own panel (markups points, a markups ROI box, one segment per object, uncertainty).
The Slicer-only glue is kept thin; HTTP, geometry and label map bookkeeping are in
``FastSAM3DLib.logic``, tested outside Slicer against a real server. Requests run off the GUI
thread; the panel's shortcuts exist only while the module is shown.
"""

from __future__ import annotations

import contextlib
import os

import numpy as np
import qt
from FastSAM3DLib.logic import Background, FastSAM3DLogic, ServerError
from FastSAM3DLib.SegmentEditorEffect import world_ijk_to_ras
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

import slicer

try:  # Slicer >= 5.4
    from slicer.parameterNodeWrapper import parameterNodeWrapper

    @parameterNodeWrapper
    class FastSAM3DParameterNode:
        """The module's settings, saved with the scene (the API key is not: it stays in the panel)."""

        serverUrl: str = "http://127.0.0.1:8000"
        model: str = ""
        uncertaintySamples: int = 16
except ImportError:  # older Slicer: no wrapper, plain defaults
    FastSAM3DParameterNode = None


class FastSAM3D(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "FastSAM3D"
        self.parent.categories = ["Segmentation"]
        self.parent.contributors = ["fastsam3d developers"]
        self.parent.helpText = (
            "Click include/exclude points in any view; the mask appears as a segment. Needs a running "
            "<tt>fastsam3d serve</tt> (see the fastsam3d README)."
        )
        self.parent.acknowledgementText = "SAM-Med3D and FastSAM3D models; fastsam3d server."
        slicer.app.connect("startupCompleted()", registerEffect)


def registerEffect():
    """Register the FastSAM3D Segment Editor effect (scripted effects are registered by path)."""
    import qSlicerSegmentationsEditorEffectsPythonQt as effects

    effect = effects.qSlicerSegmentEditorScriptedEffect(None)
    path = os.path.join(os.path.dirname(__file__), "FastSAM3DLib", "SegmentEditorEffect.py")
    effect.setPythonSource(path.replace("\\", "/"))
    effect.self().register()


class FastSAM3DWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self.volume_node = None
        self.segmentation_node = None
        self.points_node = None
        self.shortcuts = []
        self.pending = None  # Background request in flight
        self.timer = None
        self._parameterNode = None

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        widget = slicer.util.loadUI(self.resourcePath("UI/FastSAM3D.ui"))
        self.layout.addWidget(widget)
        self.ui = slicer.util.childWidgetVariables(widget)
        widget.setMRMLScene(slicer.mrmlScene)
        if FastSAM3DParameterNode is not None:
            self._parameterNode = FastSAM3DParameterNode(FastSAM3DModuleLogic().getParameterNode())
            self.ui.urlLineEdit.text = self._parameterNode.serverUrl
        else:
            self.ui.urlLineEdit.text = qt.QSettings().value("FastSAM3D/url", "http://127.0.0.1:8000")
        self.timer = qt.QTimer()
        self.timer.setInterval(50)
        self.timer.connect("timeout()", self._poll)
        self.progress = qt.QProgressBar()
        self.progress.setRange(0, 0)
        self.progress.hide()
        self.layout.addWidget(self.progress)
        self.ui.connectButton.connect("clicked(bool)", self.onConnect)
        self.ui.sendVolumeButton.connect("clicked(bool)", self.onSendVolume)
        self.ui.includeButton.connect("clicked(bool)", lambda: self.placePoint(True))
        self.ui.excludeButton.connect("clicked(bool)", lambda: self.placePoint(False))
        self.ui.boxButton.connect("clicked(bool)", self.onBox)
        self.ui.newObjectButton.connect("clicked(bool)", self.onNewObject)
        self.ui.undoButton.connect("clicked(bool)", lambda: self.run(lambda: self.logic.undo()))
        self.ui.redoButton.connect("clicked(bool)", lambda: self.run(lambda: self.logic.redo()))
        self.ui.uncertaintyButton.connect("clicked(bool)", self.onUncertainty)

    def enter(self):
        """Shortcuts only while this module is shown (they would clash with Segment Editor's elsewhere)."""
        for key, action in (
            ("i", lambda: self.placePoint(True)),
            ("e", lambda: self.placePoint(False)),
            ("b", self.onBox),
            ("n", self.onNewObject),
            ("Ctrl+z", lambda: self.run(lambda: self.logic.undo())),
            ("Ctrl+y", lambda: self.run(lambda: self.logic.redo())),
        ):
            shortcut = qt.QShortcut(qt.QKeySequence(key), slicer.util.mainWindow())
            shortcut.connect("activated()", action)
            self.shortcuts.append(shortcut)

    def exit(self):
        for shortcut in self.shortcuts:
            shortcut.disconnect("activated()")
            shortcut.setParent(None)
        self.shortcuts = []

    def cleanup(self):
        self.removeObservers()
        self.exit()
        if self.timer is not None:
            self.timer.stop()
        if self.logic is not None:
            with contextlib.suppress(ServerError):
                self.logic.close()

    # --- requests off the GUI thread -----------------------------------------------------

    def background(self, function, done, text="working…"):
        """Run ``function()`` in a thread (the UI stays live, a busy bar shows), then ``done(result)`` here."""
        if self.pending is not None:
            slicer.util.showStatusMessage("FastSAM3D: a request is still running", 3000)
            return
        self.pending = (Background(function), done)
        self.progress.show()
        slicer.util.showStatusMessage(f"FastSAM3D: {text}")
        self.timer.start()

    def _poll(self):
        call, done = self.pending
        if not call.poll():
            return
        self.timer.stop()
        self.pending = None
        self.progress.hide()
        slicer.util.showStatusMessage("")
        if call.error is not None:
            slicer.util.errorDisplay(f"FastSAM3D: {call.error}")
            return
        done(call.result)

    # --- actions --------------------------------------------------------------------------

    def onConnect(self):
        qt.QSettings().setValue("FastSAM3D/url", self.ui.urlLineEdit.text)
        if self._parameterNode is not None:
            self._parameterNode.serverUrl = self.ui.urlLineEdit.text
        self.logic = FastSAM3DLogic(self.ui.urlLineEdit.text, self.ui.apiKeyLineEdit.text or None)

        def connected(result):
            health, models = result
            self.ui.serverStatusLabel.text = f"connected: {health['sessions']} sessions open"
            self.ui.modelComboBox.clear()
            for model in models:  # every model; the unavailable ones are listed as such
                label = (
                    f"{model['name']} ({model['dims']}D)" if model["available"] else f"{model['name']} (not installed)"
                )
                self.ui.modelComboBox.addItem(label, model["name"])

        self.ui.serverStatusLabel.text = "connecting…"
        self.background(lambda: (self.logic.check(), self.logic.models()), connected, "connecting")

    def onSendVolume(self):
        if self.logic is None:
            self.onConnect()
        self.volume_node = self.ui.inputVolumeSelector.currentNode()
        if self.volume_node is None:
            slicer.util.errorDisplay("choose a volume first")
            return
        array, matrix, name = (
            slicer.util.arrayFromVolume(self.volume_node).copy(),
            world_ijk_to_ras(self.volume_node),
            self.volume_node.GetName(),
        )
        model = self.ui.modelComboBox.currentData or None

        def sent(answer):
            if self.segmentation_node is None or slicer.mrmlScene.GetNodeByID(self.segmentation_node.GetID()) is None:
                self.segmentation_node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "FastSAM3D")
                self.segmentation_node.CreateDefaultDisplayNodes()
            self.segmentation_node.SetReferenceImageGeometryParameterFromVolumeNode(self.volume_node)
            self.onNewObject()

        self.background(lambda: self.logic.open_volume(array, matrix, name, model=model), sent, "uploading the volume")

    def onNewObject(self):
        if self.logic is None or self.logic.session is None:
            return

        def added(label):
            if self.segmentation_node.GetSegmentation().GetSegment(f"object {label}") is None:
                self.segmentation_node.GetSegmentation().AddEmptySegment(f"object {label}", f"object {label}")

        self.background(self.logic.add_object, added, "new object")

    def placePoint(self, positive: bool):
        """Start placing one markups point; when placed it is sent as an include/exclude click."""
        if self.logic is None or self.logic.session is None:
            slicer.util.errorDisplay("send a volume first")
            return
        if self.points_node is None:
            self.points_node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "FastSAM3D points")
            self.addObserver(self.points_node, self.points_node.PointPositionDefinedEvent, self.onPointPlaced)
        self._positive = positive
        slicer.modules.markups.logic().StartPlaceMode(False)
        slicer.app.applicationLogic().GetSelectionNode().SetActivePlaceNodeID(self.points_node.GetID())

    def onPointPlaced(self, caller, event):
        index = caller.GetNumberOfControlPoints() - 1
        ras = [0.0, 0.0, 0.0]
        caller.GetNthControlPointPositionWorld(index, ras)
        caller.SetNthControlPointLabel(index, "+" if self._positive else "-")
        positive = self._positive
        self.run(lambda: self.logic.click(ras, positive))

    def onBox(self):
        roi = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLMarkupsROINode")
        if roi is None or self.logic is None:
            slicer.util.errorDisplay("place a markups ROI around the object first")
            return
        bounds = [0.0] * 6
        roi.GetRASBounds(bounds)
        self.run(lambda: self.logic.box(bounds[0::2], bounds[1::2]))

    def onUncertainty(self):
        if self.logic is None or self.logic.session is None:
            return
        samples = self._parameterNode.uncertaintySamples if self._parameterNode is not None else 16

        def show(entropy):
            node = slicer.mrmlScene.GetFirstNodeByName(
                "FastSAM3D uncertainty"
            ) or slicer.modules.volumes.logic().CloneVolume(slicer.mrmlScene, self.volume_node, "FastSAM3D uncertainty")
            slicer.util.updateVolumeFromArray(node, entropy)
            slicer.util.setSliceViewerLayers(foreground=node, foregroundOpacity=0.5)

        self.background(lambda: self.logic.uncertainty(samples=samples), show, "uncertainty")

    def run(self, action):
        """Run one server interaction off the GUI thread, then update the segments it changed."""
        if self.logic is None or self.logic.session is None:
            return

        def shown(answer):
            self.updateSegments(answer)
            timings = self.logic.last_timings
            self.ui.timingLabel.text = f"server {timings.get('server', 0):.0f} ms"

        self.background(action, shown, "segmenting")

    def updateSegments(self, answer):
        """Copy the changed region of each object into its segment (only that box is rewritten)."""
        from FastSAM3DLib.logic import segment_region

        segmentation = self.segmentation_node.GetSegmentation()
        for obj in self.logic.objects:
            segment_id = f"object {obj['label']}"
            if segmentation.GetSegment(segment_id) is None:
                segmentation.AddEmptySegment(segment_id, obj["name"])
            part = segment_region(answer, self.logic.labels, obj["label"])
            if part is None:
                continue
            extent, mask = part
            i0, i1, j0, j1, k0, k1 = extent
            full = slicer.util.arrayFromSegmentBinaryLabelmap(self.segmentation_node, segment_id, self.volume_node)
            full[k0 : k1 + 1, j0 : j1 + 1, i0 : i1 + 1] = mask
            slicer.util.updateSegmentBinaryLabelmapFromArray(full, self.segmentation_node, segment_id, self.volume_node)


class FastSAM3DModuleLogic(ScriptedLoadableModuleLogic):
    """Slicer's logic slot (holds the parameter node): the real logic is :class:`FastSAM3DLib.logic.FastSAM3DLogic`."""


class FastSAM3DTest(ScriptedLoadableModuleTest):
    """Self-test inside Slicer: needs a fastsam3d server at $FASTSAM3D_URL (default localhost:8000) and
    fails, naming what to start, when there is none. It drives the Segment Editor effect."""

    def runTest(self):
        slicer.mrmlScene.Clear()
        self.test_click_makes_a_segment()

    def test_click_makes_a_segment(self):
        import os

        import SampleData

        volume = SampleData.SampleDataLogic().downloadMRHead()
        url = os.environ.get("FASTSAM3D_URL", "http://127.0.0.1:8000")
        logic = FastSAM3DLogic(url)
        try:
            logic.check()
        except ServerError as error:
            self.fail(
                f"no fastsam3d server: {error}. Start one (pip install 'fastsam3d[server]'; fastsam3d serve) "
                "or set FASTSAM3D_URL"
            )
        logic.open_volume(slicer.util.arrayFromVolume(volume), world_ijk_to_ras(volume), volume.GetName())
        logic.add_object("test")
        centre = np.array(volume.GetImageData().GetDimensions()) / 2
        ras = (world_ijk_to_ras(volume) @ np.append(centre, 1.0))[:3]
        logic.click(ras, True)
        self.assertTrue(logic.labels.any())
        logic.undo()
        self.assertFalse(logic.labels.any())
        logic.close()
        self.test_effect_segments_the_selected_segment(volume, ras)
        self.delayDisplay("FastSAM3D self-test passed")

    def test_effect_segments_the_selected_segment(self, volume, ras):
        segmentation = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode")
        segmentation.CreateDefaultDisplayNodes()
        segmentation.SetReferenceImageGeometryParameterFromVolumeNode(volume)
        segment_id = segmentation.GetSegmentation().AddEmptySegment("test")
        editor = slicer.qMRMLSegmentEditorWidget()
        editor.setMRMLScene(slicer.mrmlScene)
        editor.setMRMLSegmentEditorNode(slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentEditorNode"))
        editor.setSegmentationNode(segmentation)
        editor.setSourceVolumeNode(volume) if hasattr(editor, "setSourceVolumeNode") else editor.setMasterVolumeNode(
            volume
        )
        editor.setCurrentSegmentID(segment_id)
        editor.setActiveEffectByName("FastSAM3D")
        effect = editor.activeEffect().self()
        effect.urlEdit.text = os.environ.get("FASTSAM3D_URL", "http://127.0.0.1:8000")
        effect.connect()
        self._wait(effect)
        effect.submit(lambda label: effect.logic.click(list(ras), True, label))
        self._wait(effect)  # the upload
        self._wait(effect)  # the click
        self.assertTrue(slicer.util.arrayFromSegmentBinaryLabelmap(segmentation, segment_id, volume).any())
        editor.undo()  # Segment Editor undo restores the segment
        self.assertFalse(slicer.util.arrayFromSegmentBinaryLabelmap(segmentation, segment_id, volume).any())

    def _wait(self, effect, seconds=300):
        import time

        deadline = time.monotonic() + seconds
        while effect.pending is not None and time.monotonic() < deadline:
            slicer.app.processEvents()
            time.sleep(0.02)
        self.assertIsNone(effect.pending, "the request did not finish in time")
