"""Saving an engine's objects and history as plain data and restoring them into a new engine."""

from __future__ import annotations

import json

import numpy as np

from fastsam3d.engine.persistence import StepEncoder, restore_objects, take_snapshot, to_json
from fastsam3d.engine.session2d import SliceSession
from fastsam3d.engine.session3d import Session

from ..helpers import BrightInBox, IntensityModel, ellipsoid_volume, sphere_volume


def test_a_restored_3d_session_keeps_objects_label_map_and_history():
    volume, truth = sphere_volume()
    session = Session(IntensityModel(), device="cpu")
    session.set_image(volume)
    centre = [int(v) for v in np.argwhere(truth).mean(0).round()]
    session.add_object("tumour")
    session.add_click(centre)
    session.add_click([centre[0] + 6, centre[1], centre[2]], positive=False)
    session.add_lasso(
        [
            [centre[0] - 3, centre[1] - 3, centre[2]],
            [centre[0] + 3, centre[1] - 3, centre[2]],
            [centre[0], centre[1] + 3, centre[2]],
        ]
    )
    session.add_object("second")
    session.add_click([centre[0] - 4, centre[1], centre[2]])
    session.undo(1)
    encoder = StepEncoder()
    snapshot = take_snapshot(session)
    objects = encoder.encode(session, snapshot)
    assert encoder.encode(session, take_snapshot(session))[0].steps[1] is objects[0].steps[1]  # encoded once
    json.dumps([step.prompts for obj in objects for step in obj.steps])  # prompts are plain JSON

    restored = Session(IntensityModel(), device="cpu")
    restored.set_image(volume)
    restore_objects(restored, objects, snapshot.active)
    assert np.array_equal(restored.label_map(), session.label_map())
    assert [o.name for o in restored.objects.values()] == ["tumour", "second"] and restored.active == 2
    assert restored.objects[1].state.clicks == session.objects[1].state.clicks
    restored.redo(1)
    session.redo(1)
    saved_stroke, stroke = restored.objects[1].state.strokes[0], session.objects[1].state.strokes[0]
    assert saved_stroke == stroke and np.array_equal(saved_stroke.voxels, stroke.voxels)  # strokes are prompts too
    restored.undo(1)
    session.undo(1)
    for engine in (session, restored):
        engine.redo(1)
    assert np.array_equal(restored.label_map(), session.label_map())
    for engine in (session, restored):
        engine.undo(1)
        engine.undo(1)
    assert np.array_equal(restored.label_map(), session.label_map())
    restored.redo(1)
    restored.add_click([centre[0] + 3, centre[1], centre[2]], label=1)  # continues from the saved mask
    assert restored.mask(1).any() and restored.objects[1].state.logits


def test_a_restored_2d_session_keeps_its_masks_and_clicks():
    volume, inside = ellipsoid_volume()
    session = SliceSession(BrightInBox(), device="cpu")
    session.set_image(volume)
    where = np.argwhere(inside[:, :, 10])
    session.set_box((*where.min(0), 10), (*where.max(0), 10))
    snapshot = take_snapshot(session)
    objects = StepEncoder().encode(session, snapshot)
    restored = SliceSession(BrightInBox(), device="cpu")
    restored.set_image(volume)
    restore_objects(restored, objects, snapshot.active)
    assert np.array_equal(restored.label_map(), session.label_map())
    assert restored.objects[1].state == session.objects[1].state
    assert restored.undo() is not None and not restored.label_map().any()


def test_prompt_values_survive_json():
    from fastsam3d.engine.persistence import from_json

    value = (np.arange(3, dtype=np.int16), slice(2, 5), {1: (0.5, True)}, np.float32(1.5))
    back = from_json(json.loads(json.dumps(to_json(value))))
    assert back[0].dtype == np.int16 and back[0].tolist() == [0, 1, 2]
    assert back[1:] == (slice(2, 5), {1: (0.5, True)}, 1.5)


def test_steps_held_as_masks_undo_exactly_and_continue_in_their_rois():
    volume, truth = sphere_volume()
    centre = np.array([int(v) for v in np.argwhere(truth).mean(0).round()])
    session, twin = Session(IntensityModel(), device="cpu"), Session(IntensityModel(), device="cpu")
    encoder = StepEncoder()
    for engine in (session, twin):
        engine.set_image(volume)
        engine.add_object("tumour")
    for offset, positive in [(0, True), (6, False), (-4, True), (3, True), (-7, False)]:
        for engine in (session, twin):
            engine.add_click(centre + [offset, 0, 0], positive=positive)
        encoder.encode(session, take_snapshot(session))
    for engine in (session, twin):
        engine.undo(1)
    history = session.objects[1].history
    assert encoder.hold_steps(session, keep=1) == 2  # steps 1 and 2 (step 0 is empty; 3-5 are near step 4)
    assert [bool(state.logits) for state in history] == [False, False, False, True, True, True]
    assert all(state.initial_mask.compressed and state.rois for state in history[1:3])
    assert encoder.hold_steps(session, keep=1) == 0  # done once
    for _ in range(3):  # an undo into the held steps shows exactly what their logits showed
        for engine in (session, twin):
            engine.undo(1)
        assert np.array_equal(session.label_map(), twin.label_map())
        assert session.objects[1].state.clicks == twin.objects[1].state.clicks
    saved = encoder.encode(session, take_snapshot(session))
    assert all(step.mask.compressed or step.mask.box is None for step in saved[0].steps)
    for engine in (session, twin):  # a click on a held step decodes the ROI it was in
        engine.redo(1)
        engine.add_click(centre + [2, 0, 0], label=1)
    assert np.array_equal(session.label_map(), twin.label_map())
    assert session.predictor.encoder_runs == twin.predictor.encoder_runs  # no new ROI

    restored = Session(IntensityModel(), device="cpu")  # a record keeps a held step's ROIs
    restored.set_image(volume)
    restore_objects(restored, encoder.encode(session, take_snapshot(session)), 1)
    assert restored.objects[1].history[1].rois == session.objects[1].history[1].rois
