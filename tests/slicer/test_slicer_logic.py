"""The 3D Slicer module's logic (Qt- and Slicer-free) against a real running fastsam3d server."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import pytest

from fastsam3d.clicks import dice
from fastsam3d.io import lps_to_ras
from fastsam3d.server.app import create_app
from fastsam3d.server.settings import ServerSettings

from ..helpers import BrightInBox, IntensityModel, ellipsoid_volume, running_server, sphere_volume

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "slicer" / "FastSAM3D"))
from FastSAM3DLib.logic import (
    Background,
    FastSAM3DLogic,
    ServerError,
    SessionGone,
    apply_segment_region,
    flat_box_corners,
    ras_to_ijk,
    segment_region,
)


@pytest.fixture(scope="module")
def server_url():
    with running_server(create_app(ServerSettings(api_key="k"), model=IntensityModel())) as url:
        yield url


def slicer_volume():
    """The oblique, anisotropic sphere as Slicer holds it: a (K, J, I) array and its IJK-to-RAS matrix."""
    volume, truth = sphere_volume()
    ijk_to_ras = np.diag([-1.0, -1.0, 1.0, 1.0]) @ volume.affine  # LPS -> RAS rows
    return volume.array.transpose(2, 1, 0), ijk_to_ras, truth.transpose(2, 1, 0), volume


def test_logic_segments_undoes_and_maps_geometry(server_url):
    array, ijk_to_ras, truth, volume = slicer_volume()
    logic = FastSAM3DLogic(server_url, api_key="k")
    assert logic.check()["status"] == "ok"
    models = logic.models()
    assert models[0]["name"] == "default" and all({"name", "dims", "prompts", "available"} <= set(m) for m in models)
    info = logic.open_volume(array, ijk_to_ras, "sphere", model="default")
    assert info["shape"] == [120, 100, 44]  # i, j, k on the server
    np.testing.assert_allclose(info["spacing"], volume.spacing, rtol=1e-5)
    np.testing.assert_allclose(info["direction"], volume.direction, atol=1e-5)
    first = logic.add_object("sphere")
    centre_ijk = np.argwhere(truth).mean(0)[::-1]  # (i, j, k)
    ras = (ijk_to_ras @ np.append(centre_ijk, 1.0))[:3]
    np.testing.assert_allclose(ras_to_ijk(ijk_to_ras, ras), centre_ijk, atol=1e-6)
    logic.click(ras, positive=True)
    mask = logic.labels == first
    assert dice(mask, truth) > 0.9  # in Slicer's (K, J, I) order
    k, j, i = np.round(centre_ijk[::-1]).astype(int)
    logic.click(ras, positive=False)  # exclude ball around the centre
    assert logic.labels[k, j, i] == 0
    logic.undo()
    assert logic.labels[k, j, i] == first
    logic.redo()
    assert logic.labels[k, j, i] == 0
    second = logic.add_object("box")
    low = lps_to_ras(volume.index_to_world(np.array([[5.0, 5.0, 2.0]]))[0])
    high = lps_to_ras(volume.index_to_world(np.array([[60.0, 60.0, 20.0]]))[0])
    logic.box(low, high)
    assert logic.active == second and [o["label"] for o in logic.objects] == [first, second]
    entropy = logic.uncertainty(samples=2, label=first)
    assert entropy.shape == array.shape and entropy.dtype == np.float32
    logic.close()
    assert logic.session is None


def test_logic_reports_server_problems(server_url):
    array, ijk_to_ras, _, _ = slicer_volume()
    with pytest.raises(ServerError, match="401"):
        FastSAM3DLogic(server_url, api_key="wrong").open_volume(array, ijk_to_ras)
    with pytest.raises(ServerError, match="cannot reach"):
        FastSAM3DLogic("http://127.0.0.1:9", timeout=2).check()
    logic = FastSAM3DLogic(server_url, api_key="k")
    with pytest.raises(ServerError, match="no volume is open"):
        logic.click((0, 0, 0))
    with pytest.raises(ServerError, match="not offered"):
        logic.open_volume(array, ijk_to_ras, model="no-such-model")
    logic.open_volume(array, ijk_to_ras)
    with pytest.raises(ServerError, match="outside the volume"):
        logic.click((5000.0, 0.0, 0.0))
    logic.close()


def test_effect_applies_only_the_changed_region_with_masking(server_url):
    """The Segment Editor effect's path: each answer's changed box applied to one segment (Set mode,
    within the extent, editable area and overwrite honoured) reproduces the server's object mask;
    requests run in a background thread; a box by two corners on one slice gets a depth."""
    array, ijk_to_ras, truth, _ = slicer_volume()
    logic = FastSAM3DLogic(server_url, api_key="k")
    Background(logic.open_volume, array, ijk_to_ras, "sphere").wait(60)
    label = Background(logic.add_object, "sphere").wait(60)
    centre_ijk = np.argwhere(truth).mean(0)[::-1]
    ras = (ijk_to_ras @ np.append(centre_ijk, 1.0))[:3]
    segment = np.zeros(array.shape, np.uint8)  # the selected segment, (K, J, I)
    editable = np.ones(array.shape, bool)
    editable[:, :, : array.shape[2] // 2] = False  # masking: only the half i >= I/2 may change
    masked = np.zeros(array.shape, np.uint8)
    other = np.zeros(array.shape, np.uint8)
    other[truth] = 1  # another segment under the object, overwritten where the object is painted
    sizes = []
    for request in (
        lambda: logic.click(ras, True, label),
        lambda: logic.click(ras, False, label),
        lambda: logic.undo(label),
        lambda: logic.redo(label),
    ):
        answer = Background(request).wait(60)
        extent, mask = segment_region(answer, logic.labels, label)
        sizes.append(mask.size)
        apply_segment_region(segment, extent, mask)
        apply_segment_region(masked, extent, mask, editable_kji=editable, others_kji=other, overwrite_others=True)
        np.testing.assert_array_equal(segment, logic.labels == label)  # changed regions add up to the full mask
    assert sizes[1] < 0.5 * array.size  # the exclude click changed a box, not the volume
    np.testing.assert_array_equal(masked[~editable], 0)
    np.testing.assert_array_equal(masked[editable], (logic.labels == label)[editable])
    assert not (other.astype(bool) & masked.astype(bool)).any()  # overwrite: the other segment gave way

    # two corners on one axial slice: a slab for a 3D model, the flat box for a 2D model
    k = round(centre_ijk[2])
    a = (ijk_to_ras @ np.array([centre_ijk[0] - 12, centre_ijk[1] - 12, k, 1.0]))[:3]
    b = (ijk_to_ras @ np.array([centre_ijk[0] + 12, centre_ijk[1] + 12, k, 1.0]))[:3]
    low, high = (ras_to_ijk(ijk_to_ras, c) for c in logic.flat_box(ijk_to_ras, a, b))
    assert abs(high[2] - low[2]) >= 2 and round(min(low[2], high[2])) < k < round(max(low[2], high[2]))
    flat = [ras_to_ijk(ijk_to_ras, c) for c in flat_box_corners(ijk_to_ras, a, b, dims=2)]
    assert round(flat[0][2]) == round(flat[1][2]) == k
    second = logic.add_object("box")
    answer = logic.box(*logic.flat_box(ijk_to_ras, a, b), label=second)
    assert segment_region(answer, logic.labels, second)[1].any()
    with pytest.raises(ServerError, match="cannot reach"):
        Background(FastSAM3DLogic("http://127.0.0.1:9", timeout=2).check).wait(10)
    logic.close()


class QPoint:
    """Qt's QPoint as the effect must build it for ``xyToRas`` (PythonQt refuses a plain tuple)."""

    def __init__(self, x: int, y: int) -> None:
        self._x, self._y = x, y

    def x(self) -> int:
        return self._x

    def y(self) -> int:
        return self._y


@pytest.fixture
def stand_in_effect(server_url, monkeypatch):
    """The Segment Editor effect's own Python with Slicer, Qt and VTK replaced by stand-ins, against
    a real server: yields the effect, its scripted-effect mock, the modifier's scalars and ``settle``
    (what the QTimer does until the background call ends)."""
    import importlib
    import time
    import types
    from unittest import mock

    array, ijk_to_ras, _, _ = slicer_volume()
    scalars = {}

    class Modifier:
        def SetExtent(self, *extent):
            self.extent = extent

        def AllocateScalars(self, *args):
            i0, i1, j0, j1, k0, k1 = self.extent
            scalars["array"] = np.zeros((k1 - k0 + 1) * (j1 - j0 + 1) * (i1 - i0 + 1), np.uint8)

        def SetImageToWorldMatrix(self, matrix):
            pass

        def GetPointData(self):
            return mock.Mock(GetScalars=lambda: "scalars")

    numpy_support = types.SimpleNamespace(vtk_to_numpy=lambda _: scalars["array"])
    vtk = mock.MagicMock()
    vtk.util.numpy_support = numpy_support
    slicer = mock.MagicMock()
    slicer.util.arrayFromVolume = lambda node: array
    slicer.util.arrayFromVTKMatrix = lambda matrix: ijk_to_ras
    slicer.vtkOrientedImageData = Modifier
    base = types.ModuleType("SegmentEditorEffects")

    class Abstract:
        def __init__(self, scriptedEffect):
            self.scriptedEffect = scriptedEffect

    base.AbstractScriptedSegmentEditorEffect = Abstract
    qt = mock.MagicMock()
    qt.QPoint = QPoint
    qt.QTimer.side_effect = lambda *args: mock.MagicMock()  # one timer each: polling, heartbeat
    for name, module in (
        ("qt", qt),
        ("slicer", slicer),
        ("vtk", vtk),
        ("vtk.util", vtk.util),
        ("vtk.util.numpy_support", numpy_support),
        ("SegmentEditorEffects", base),
    ):
        monkeypatch.setitem(sys.modules, name, module)
    for name in ("FastSAM3DLib.SegmentEditorEffect", "FastSAM3DLib.sessionpanel", "FastSAM3DLib.views"):
        monkeypatch.delitem(sys.modules, name, raising=False)  # imported afresh with this test's stand-ins
    effect_module = importlib.import_module("FastSAM3DLib.SegmentEditorEffect")
    scripted = mock.MagicMock()
    volume = mock.MagicMock()
    volume.GetParentTransformNode.return_value = None
    parameters = scripted.parameterSetNode.return_value
    parameters.GetSourceVolumeNode.return_value = volume
    parameters.GetSelectedSegmentID.return_value = "Segment_1"
    parameters.GetSegmentationNode.return_value.GetSegmentation.return_value.GetSegment.return_value.GetName.return_value = "liver"
    effect = effect_module.SegmentEditorEffect(scripted)
    effect.modelBox = mock.MagicMock(currentData=None)
    effect.statusLabel, effect.progress, effect.depthBox = mock.MagicMock(), mock.MagicMock(), mock.MagicMock(value=0)
    effect.cancelButton, effect.sessionBox = mock.MagicMock(), mock.MagicMock()
    effect.modeButtons = {
        name: mock.MagicMock() for name in ("include", "exclude", "point", "box", "scribble", "lasso")
    }
    effect.logic = FastSAM3DLogic(server_url, api_key="k")
    sent = []  # (method, path, payload) of every request, in order
    request = effect.logic._request

    def recording(method, path, payload=None, **kwargs):
        sent.append((method, path, payload))
        return request(method, path, payload, **kwargs)

    effect.logic._request = recording
    effect.sent = sent

    def settle():
        deadline = time.monotonic() + 60
        while effect.pending is not None and time.monotonic() < deadline:
            effect._poll()  # what the QTimer does
            time.sleep(0.01)
        assert effect.pending is None and "error" not in str(effect.statusLabel.text), effect.statusLabel.text

    yield effect, scripted, scalars, settle, vtk
    effect.logic.close()


def test_effect_glue_with_stand_in_slicer(stand_in_effect):
    """A click uploads the volume and segments in background calls, then hands the Segment Editor
    one modifier labelmap with the changed extent, after saving an undo state. What Slicer does with
    it is Slicer's; this checks the glue's wiring against a real server."""
    effect, scripted, scalars, settle, _ = stand_in_effect
    _, ijk_to_ras, truth, _ = slicer_volume()
    centre_ijk = np.argwhere(truth).mean(0)[::-1]
    ras = (ijk_to_ras @ np.append(centre_ijk, 1.0))[:3].tolist()
    effect.submit(lambda label: effect.logic.click(ras, True, label))
    settle()
    assert effect.objects == {"Segment_1": 1} and effect.logic.session["shape"] == [120, 100, 44]
    calls = [c[0] for c in scripted.method_calls if c[0] in ("saveStateForUndo", "modifySelectedSegmentByLabelmap")]
    assert calls == ["saveStateForUndo", "modifySelectedSegmentByLabelmap"]
    _modifier, _mode, extent = scripted.modifySelectedSegmentByLabelmap.call_args[0]
    i0, i1, j0, j1, k0, k1 = extent
    mask = scalars["array"].reshape(k1 - k0 + 1, j1 - j0 + 1, i1 - i0 + 1)
    np.testing.assert_array_equal(mask, effect.logic.labels[k0 : k1 + 1, j0 : j1 + 1, i0 : i1 + 1] == 1)
    assert mask.sum() > 0.9 * truth.sum()


def test_effect_clicks_reach_xy_to_ras_as_a_qpoint(stand_in_effect):
    """A left click in a slice view: the event position goes to ``xyToRas`` as a QPoint (as Slicer's own
    effects pass it), and the point it answers is clicked on the server; E then makes clicks exclude."""
    from unittest import mock

    effect, scripted, _, settle, vtk = stand_in_effect
    _, ijk_to_ras, truth, _ = slicer_volume()
    centre_ijk = np.argwhere(truth).mean(0)[::-1]
    ras = (ijk_to_ras @ np.append(centre_ijk, 1.0))[:3]
    received = []

    def xy_to_ras(xy, view):
        if not isinstance(xy, QPoint):  # PythonQt: "could not find matching overload"
            raise ValueError(f"xyToRas takes a QPoint, got {type(xy).__name__}")
        received.append((xy.x(), xy.y()))
        return mock.Mock(x=lambda: ras[0], y=lambda: ras[1], z=lambda: ras[2])  # a QVector3D

    scripted.xyToRas.side_effect = xy_to_ras
    view = mock.Mock(className=lambda: "qMRMLSliceWidget")
    interactor = mock.Mock(
        GetEventPosition=lambda: (212, 87), GetControlKey=lambda: 0, GetShiftKey=lambda: 0, GetKeySym=lambda: "e"
    )
    assert effect.processInteractionEvents(interactor, vtk.vtkCommand.LeftButtonPressEvent, view)
    settle()
    assert received == [(212, 87)]
    k, j, i = np.round(centre_ijk[::-1]).astype(int)
    assert effect.logic.labels[k, j, i] == 1
    assert effect.processInteractionEvents(interactor, vtk.vtkCommand.KeyPressEvent, view) and not effect.positive
    assert effect.processInteractionEvents(interactor, vtk.vtkCommand.LeftButtonPressEvent, view)
    settle()
    assert received == [(212, 87)] * 2 and effect.logic.labels[k, j, i] == 0


def test_logic_segments_with_a_2d_model_from_a_box_on_one_slice():
    """A 2D model through the Slicer logic: listed with its prompts, a box clicked on one axial slice
    sent flat, segmented and propagated through the sphere's slices."""
    app = create_app(ServerSettings(api_key="k"), model=IntensityModel())
    app.state.store.models.loaded["bright-in-box"] = BrightInBox()  # a loaded 2D model
    volume, inside = ellipsoid_volume()  # noise-free: the stand-in model thresholds each slice
    array, truth = volume.array.transpose(2, 1, 0), inside.transpose(2, 1, 0)
    ijk_to_ras = np.diag([-1.0, -1.0, 1.0, 1.0]) @ volume.affine
    with running_server(app) as url:
        logic = FastSAM3DLogic(url, api_key="k")
        listed = {m["name"]: m for m in logic.models()}
        assert listed["bright-in-box"]["dims"] == 2 and listed["bright-in-box"]["prompts"] == ["box"]
        info = logic.open_volume(array, ijk_to_ras, "sphere", model="bright-in-box")
        assert info["dims"] == 2
        label = logic.add_object("sphere")
        where = np.argwhere(truth)  # (k, j, i)
        k = round(where[:, 0].mean())
        plane = np.argwhere(truth[k])  # (j, i) on the middle slice
        a = (ijk_to_ras @ np.array([plane[:, 1].min() - 2, plane[:, 0].min() - 2, k, 1.0]))[:3]
        b = (ijk_to_ras @ np.array([plane[:, 1].max() + 2, plane[:, 0].max() + 2, k, 1.0]))[:3]
        corners = logic.flat_box(ijk_to_ras, a, b)
        assert round(ras_to_ijk(ijk_to_ras, corners[0])[2]) == round(ras_to_ijk(ijk_to_ras, corners[1])[2]) == k
        answer = logic.box(*corners, label=label)
        mask = logic.labels == label
        assert answer["slices"] > 5 and mask.any(axis=(1, 2)).sum() > 5  # propagated beyond the drawn slice
        assert dice(mask, truth) > 0.9
        logic.close()


def slice_view_stand_ins(scripted, ijk_to_ras, k):
    """A slice view whose display (x, y) is voxel (x / 4, y / 4) on slice ``k``: ``xyToRas`` takes a QPoint."""
    from unittest import mock

    received = []

    def xy_to_ras(xy, view):
        if not isinstance(xy, QPoint):  # PythonQt: "could not find matching overload"
            raise ValueError(f"xyToRas takes a QPoint, got {type(xy).__name__}")
        received.append((xy.x(), xy.y()))
        ras = (ijk_to_ras @ np.array([xy.x() / 4, xy.y() / 4, k, 1.0]))[:3]
        return mock.Mock(x=lambda: ras[0], y=lambda: ras[1], z=lambda: ras[2])

    scripted.xyToRas.side_effect = xy_to_ras
    view = mock.Mock(className=lambda: "qMRMLSliceWidget")
    return view, received


def test_effect_lasso_drag_sends_ras_points_and_keeps_the_session(stand_in_effect):
    """L then a left-button drag around the sphere's centre: each event position goes through ``xyToRas`` as
    a QPoint, and the release sends them as one lasso in RAS (include mode); the heartbeat keeps the session."""
    from unittest import mock

    effect, scripted, _, settle, vtk = stand_in_effect
    _, ijk_to_ras, truth, _ = slicer_volume()
    i, j, k = np.round(np.argwhere(truth).mean(0)[::-1]).astype(int)
    view, received = slice_view_stand_ins(scripted, ijk_to_ras, k)
    path = [(4 * (i + di), 4 * (j + dj)) for di, dj in ((-6, -6), (6, -6), (6, 6), (6, 6), (-6, 6))]
    position = {"xy": path[0]}
    interactor = mock.Mock(
        GetEventPosition=lambda: position["xy"], GetControlKey=lambda: 0, GetShiftKey=lambda: 0, GetKeySym=lambda: "l"
    )
    assert effect.processInteractionEvents(interactor, vtk.vtkCommand.KeyPressEvent, view) and effect.tool == "lasso"
    assert effect.processInteractionEvents(interactor, vtk.vtkCommand.LeftButtonPressEvent, view)
    for xy in path[1:]:
        position["xy"] = xy
        assert effect.processInteractionEvents(interactor, vtk.vtkCommand.MouseMoveEvent, view)  # no panning
    assert effect.processInteractionEvents(interactor, vtk.vtkCommand.LeftButtonReleaseEvent, view)
    settle()
    assert received == [*path, path[-1]]  # every position, as a QPoint
    [(_, _, payload)] = [entry for entry in effect.sent if entry[1].endswith("/lasso")]
    expected = [(ijk_to_ras @ np.array([x / 4, y / 4, k, 1.0]))[:3] for x, y in (*path[:3], path[4])]
    np.testing.assert_allclose(payload["points"], expected)  # the repeated position sent once
    assert payload["coordinates"] == "ras" and payload["positive"] is True
    assert effect.logic.labels[k, j, i] == 1 and effect.logic.labels[k, j + 3, i - 3] == 1
    assert effect.heartbeatTimer.start.called  # started with the session
    effect._heartbeat()  # what its timer does
    effect.beat.wait(30)
    assert effect.sent[-1] == ("POST", f"/api/sessions/{effect.logic.session['id']}/heartbeat", {})

    # a scribble in exclude mode through the centre
    effect.setSign(False)
    effect.setTool("scribble")
    position["xy"] = (4 * i, 4 * (j - 2))
    effect.processInteractionEvents(interactor, vtk.vtkCommand.LeftButtonPressEvent, view)
    position["xy"] = (4 * i, 4 * (j + 2))
    effect.processInteractionEvents(interactor, vtk.vtkCommand.LeftButtonReleaseEvent, view)
    settle()
    assert effect.sent[-1][1].endswith("/scribble") and effect.sent[-1][2]["positive"] is False
    assert effect.logic.labels[k, j, i] == 0


def test_effect_closes_the_previous_session_and_explains_a_lost_one(stand_in_effect):
    """A second volume: its upload DELETEs the first session. A session the server lost (404): the message
    says how to go on, and the next prompt uploads the volume again."""
    from unittest import mock

    effect, scripted, _, settle, _ = stand_in_effect
    _, ijk_to_ras, truth, _ = slicer_volume()
    ras = (ijk_to_ras @ np.append(np.argwhere(truth).mean(0)[::-1], 1.0))[:3].tolist()
    effect.submit(lambda label: effect.logic.click(ras, True, label))
    settle()
    first = effect.logic.session["id"]
    scripted.parameterSetNode.return_value.GetSourceVolumeNode.return_value = mock.MagicMock()  # another volume
    effect.submit(lambda label: effect.logic.click(ras, True, label))
    settle()
    second = effect.logic.session["id"]
    assert second != first and ("DELETE", f"/api/sessions/{first}", None) in effect.sent
    listed = effect.logic.sessions()
    assert first not in [s["id"] for s in listed] and second in [s["id"] for s in listed]
    effect._listed(listed)
    assert effect.sessionBox.addItem.call_args[0][1] == second

    effect.logic._request("DELETE", f"/api/sessions/{second}")  # closed behind the effect's back (another client)
    effect.submit(lambda label: effect.logic.click(ras, True, label))
    deadline = time.monotonic() + 60
    while effect.pending is not None and time.monotonic() < deadline:
        effect._poll()
        time.sleep(0.01)
    message = str(effect.statusLabel.text)
    assert message.startswith("404") and "Resume" in message and "Prompt again" in message
    assert effect.volume_node is None and effect.heartbeatTimer.stop.called
    effect.submit(lambda label: effect.logic.click(ras, True, label))  # uploads again
    settle()
    assert effect.logic.session["id"] not in (first, second) and effect.logic.labels.any()


def test_logic_resumes_a_listed_session_and_bounds_its_requests(server_url):
    """GET /api/sessions lists a session; resume() picks it up with its objects and label map; a server that
    does not answer gives up after the timeout with a message that says so."""
    import socket

    array, ijk_to_ras, truth, _ = slicer_volume()
    logic = FastSAM3DLogic(server_url, api_key="k")
    assert logic.timeout < 600
    logic.open_volume(array, ijk_to_ras, "sphere")
    label = logic.add_object("liver")
    logic.click((ijk_to_ras @ np.append(np.argwhere(truth).mean(0)[::-1], 1.0))[:3])
    session_id = logic.session["id"]
    assert session_id in [s["id"] for s in logic.sessions()]
    other = FastSAM3DLogic(server_url, api_key="k")
    with pytest.raises(ServerError, match="not on the selected volume"):
        other.resume(session_id, (1, 2, 3))
    other.resume(session_id, array.shape)
    assert [o["name"] for o in other.objects] == ["liver"] and other.heartbeat() == {"status": "ok"}
    np.testing.assert_array_equal(other.labels, logic.labels)
    assert (other.labels == label).sum() > 0.9 * truth.sum()
    other.close()
    with pytest.raises(SessionGone, match="Resume"):
        logic.heartbeat()
    with socket.socket() as silent:  # accepts connections, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        with pytest.raises(ServerError, match=r"did not answer GET /api/health within 1 s"):
            FastSAM3DLogic(f"http://127.0.0.1:{silent.getsockname()[1]}", timeout=1).check()
