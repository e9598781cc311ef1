"""FastSAM3D: interactive 3D segmentation in 3D Slicer through a fastsam3d server.

The Slicer-only glue is kept thin: markups give the points, a markups ROI the box, a segmentation
node shows one segment per object. Everything else (HTTP, geometry, label map bookkeeping) is in
``FastSAM3DLib.logic``, which is tested outside Slicer against a real server.
"""

from __future__ import annotations

import numpy as np
import qt
import slicer
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

from FastSAM3DLib.logic import FastSAM3DLogic, ServerError


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


def world_ijk_to_ras(volume_node) -> np.ndarray:
    """The volume's IJK-to-RAS matrix in world coordinates (parent transforms applied, if linear)."""
    import vtk

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


class FastSAM3DWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self.volume_node = None
        self.segmentation_node = None
        self.points_node = None
        self.shortcuts = []

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        widget = slicer.util.loadUI(self.resourcePath("UI/FastSAM3D.ui"))
        self.layout.addWidget(widget)
        self.ui = slicer.util.childWidgetVariables(widget)
        widget.setMRMLScene(slicer.mrmlScene)
        settings = qt.QSettings()
        self.ui.urlLineEdit.text = settings.value("FastSAM3D/url", "http://127.0.0.1:8000")
        self.ui.connectButton.connect("clicked(bool)", self.onConnect)
        self.ui.sendVolumeButton.connect("clicked(bool)", self.onSendVolume)
        self.ui.includeButton.connect("clicked(bool)", lambda: self.placePoint(True))
        self.ui.excludeButton.connect("clicked(bool)", lambda: self.placePoint(False))
        self.ui.boxButton.connect("clicked(bool)", self.onBox)
        self.ui.newObjectButton.connect("clicked(bool)", self.onNewObject)
        self.ui.undoButton.connect("clicked(bool)", lambda: self.run(self.logic.undo))
        self.ui.redoButton.connect("clicked(bool)", lambda: self.run(self.logic.redo))
        self.ui.uncertaintyButton.connect("clicked(bool)", self.onUncertainty)
        for key, action in (("i", lambda: self.placePoint(True)), ("e", lambda: self.placePoint(False)), ("b", self.onBox),
                            ("n", self.onNewObject), ("Ctrl+z", lambda: self.run(self.logic.undo)),
                            ("Ctrl+y", lambda: self.run(self.logic.redo))):
            shortcut = qt.QShortcut(qt.QKeySequence(key), slicer.util.mainWindow())
            shortcut.connect("activated()", action)
            self.shortcuts.append(shortcut)

    def cleanup(self):
        self.removeObservers()
        for shortcut in self.shortcuts:
            shortcut.setParent(None)
        if self.logic is not None:
            self.logic.close()

    # --- actions --------------------------------------------------------------------------

    def onConnect(self):
        qt.QSettings().setValue("FastSAM3D/url", self.ui.urlLineEdit.text)
        self.logic = FastSAM3DLogic(self.ui.urlLineEdit.text, self.ui.apiKeyLineEdit.text or None)
        try:
            health = self.logic.check()
            self.ui.serverStatusLabel.text = f"connected: {health['sessions']} sessions open"
            self.ui.modelComboBox.clear()
            self.ui.modelComboBox.addItems(self.logic.models())
        except ServerError as error:
            self.ui.serverStatusLabel.text = "not connected"
            slicer.util.errorDisplay(str(error))

    def onSendVolume(self):
        if self.logic is None:
            self.onConnect()
        self.volume_node = self.ui.inputVolumeSelector.currentNode()
        if self.volume_node is None:
            slicer.util.errorDisplay("choose a volume first")
            return
        with slicer.util.tryWithErrorDisplay("Could not send the volume.", waitCursor=True):
            self.logic.open_volume(slicer.util.arrayFromVolume(self.volume_node), world_ijk_to_ras(self.volume_node),
                                   self.volume_node.GetName(), model=self.ui.modelComboBox.currentText or None)
            self.segmentation_node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "FastSAM3D")
            self.segmentation_node.CreateDefaultDisplayNodes()
            self.segmentation_node.SetReferenceImageGeometryParameterFromVolumeNode(self.volume_node)
            self.onNewObject()

    def onNewObject(self):
        if self.logic is None or self.logic.session is None:
            return
        label = self.logic.add_object()
        self.segmentation_node.GetSegmentation().AddEmptySegment(f"object {label}", f"object {label}")

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
        self.run(lambda: self.logic.click(ras, self._positive))

    def onBox(self):
        roi = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLMarkupsROINode")
        if roi is None or self.logic is None:
            slicer.util.errorDisplay("place a markups ROI around the object first")
            return
        bounds = [0.0] * 6
        roi.GetRASBounds(bounds)
        self.run(lambda: self.logic.box(bounds[0::2], bounds[1::2]))

    def onUncertainty(self):
        with slicer.util.tryWithErrorDisplay("Could not compute the uncertainty.", waitCursor=True):
            entropy = self.logic.uncertainty()
            node = slicer.mrmlScene.GetFirstNodeByName("FastSAM3D uncertainty") or slicer.modules.volumes.logic().CloneVolume(
                slicer.mrmlScene, self.volume_node, "FastSAM3D uncertainty")
            slicer.util.updateVolumeFromArray(node, entropy)
            slicer.util.setSliceViewerLayers(foreground=node, foregroundOpacity=0.5)

    def run(self, action):
        """Run one server interaction and show its result in the segmentation node."""
        if self.logic is None or self.logic.session is None:
            return
        with slicer.util.tryWithErrorDisplay("FastSAM3D request failed.", waitCursor=True):
            action()
            self.updateSegments()
            timings = self.logic.last_timings
            self.ui.timingLabel.text = f"server {timings.get('server', 0):.0f} ms"

    def updateSegments(self):
        """Copy each object's mask into its segment (the whole label map is held by the logic)."""
        segmentation = self.segmentation_node.GetSegmentation()
        for obj in self.logic.objects:
            segment_id = f"object {obj['label']}"
            if segmentation.GetSegment(segment_id) is None:
                segmentation.AddEmptySegment(segment_id, obj["name"])
            mask = (self.logic.labels == obj["label"]).astype(np.uint8)
            slicer.util.updateSegmentBinaryLabelmapFromArray(mask, self.segmentation_node, segment_id, self.volume_node)


class FastSAM3DModuleLogic(ScriptedLoadableModuleLogic):
    """Slicer's logic slot: the real logic is :class:`FastSAM3DLib.logic.FastSAM3DLogic`."""


class FastSAM3DTest(ScriptedLoadableModuleTest):
    """Self-test inside Slicer: needs a fastsam3d server at $FASTSAM3D_URL (default localhost:8000)."""

    def runTest(self):
        slicer.mrmlScene.Clear()
        self.test_click_makes_a_segment()

    def test_click_makes_a_segment(self):
        import os

        import SampleData

        volume = SampleData.SampleDataLogic().downloadMRHead()
        logic = FastSAM3DLogic(os.environ.get("FASTSAM3D_URL", "http://127.0.0.1:8000"))
        try:
            logic.check()
        except ServerError as error:
            self.delayDisplay(f"skipped: {error}")
            return
        logic.open_volume(slicer.util.arrayFromVolume(volume), world_ijk_to_ras(volume), volume.GetName())
        logic.add_object("test")
        centre = np.array(volume.GetImageData().GetDimensions()) / 2
        ras = (world_ijk_to_ras(volume) @ np.append(centre, 1.0))[:3]
        logic.click(ras, True)
        self.assertTrue(logic.labels.any())
        logic.undo()
        self.assertFalse(logic.labels.any())
        logic.close()
        self.delayDisplay("FastSAM3D self-test passed")
