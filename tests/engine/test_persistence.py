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
