"""An engine's objects as plain data and back, for saving a session and reopening it later.

Each step of an object's undo history is saved as its prompts (every field of the engine's state
dataclass except the ones holding its mask, as JSON, so prompt kinds added later are kept) and its
mask (a :class:`~fastsam3d.engine.labelmap.PackedMask`). A restored step holds that mask instead of model
logits: the 3D engine feeds it to the next click as a mask prompt, the 2D engine's states are masks
already. Image embeddings are not saved; the next click computes them again. A server holds the
steps far back in a long history the same way (:meth:`StepEncoder.hold_steps`), to save memory.

    snapshot = take_snapshot(session)            # cheap: references, under the session's lock
    objects = StepEncoder().encode(session, snapshot)   # the masks, off the interaction's path
    restore_objects(other_session, objects, snapshot.active)
"""

from __future__ import annotations

import dataclasses
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import base, roi, session2d, session3d
from .base import ObjectEngine, SegmentObject
from .labelmap import PackedMask, Region
from .prompts3d import state_rois

# the fields of each state type that hold its mask (the others are prompts, saved as they are)
MASK_FIELDS = {session3d.ObjectState: ("logits", "initial_mask"), session2d.SliceState: ("box", "bits")}
JSON_TYPES = {
    name: value
    for module in (session3d, session2d, base, roi)
    for name, value in vars(module).items()
    if isinstance(value, type) and dataclasses.is_dataclass(value)
}


@dataclass(frozen=True)
class SavedStep:
    """One history step: the state's prompt fields (JSON values) and its mask."""

    prompts: dict[str, Any]
    mask: PackedMask


@dataclass(frozen=True)
class SavedObject:
    label: int
    name: str
    position: int  # the current step (steps after it are redo steps)
    steps: tuple[SavedStep, ...]


@dataclass(frozen=True)
class Snapshot:
    """An engine's objects at one moment, by reference to their immutable states."""

    shape: tuple[int, ...]
    active: int | None
    objects: tuple[tuple[int, str, tuple, int], ...]  # (label, name, history, position)
    current: dict[int, list[Region]]  # each object's current mask (already computed by the engine)


def take_snapshot(engine: ObjectEngine) -> Snapshot:
    """The engine's objects (no copies of masks or images: microseconds); call it while nothing
    else changes the engine."""
    return Snapshot(
        tuple(engine.volume.shape),
        engine.active,
        tuple((label, obj.name, tuple(obj.history), obj.position) for label, obj in engine.objects.items()),
        {label: engine._regions(obj.state) for label, obj in engine.objects.items()},
    )


class StepEncoder:
    """Encodes the steps of successive snapshots of one engine, each state once (states are
    immutable, so a step saved before is taken from the previous encoding); masks are kept
    compressed. Safe to use from the engine's thread and one writer thread."""

    def __init__(self) -> None:
        self._steps: dict[int, tuple[object, SavedStep]] = {}
        self._lock = threading.Lock()

    def encode(self, engine: ObjectEngine, snapshot: Snapshot) -> tuple[SavedObject, ...]:
        """Every object of ``snapshot`` with its history; masks not computed yet are computed from
        the states alone (safe beside an engine that keeps working)."""
        steps: dict[int, tuple[object, SavedStep]] = {}
        objects = []
        for label, name, history, position in snapshot.objects:
            saved = []
            for index, state in enumerate(history):
                known = self._known(state) or steps.get(id(state))
                if known is None or known[0] is not state:
                    regions = snapshot.current[label] if index == position else engine._compute_regions(state)
                    mask = PackedMask.of_regions(regions, snapshot.shape).compress()
                    known = (state, SavedStep(state_prompts(state), mask))
                steps[id(state)] = known
                saved.append(known[1])
            objects.append(SavedObject(label, name, position, tuple(saved)))
        with self._lock:
            self._steps = steps
        return tuple(objects)

    def hold_steps(self, engine: ObjectEngine, keep: int) -> int:
        """Hold each 3D history step more than ``keep`` steps from its object's current one as its
        saved mask and ROIs instead of its model logits (512 kB per ROI for ``default``): an undo
        back to it shows the same mask, and a prompt there decodes its ROIs again with that mask as
        mask prompt. Only steps this encoder has saved change; call it while nothing else changes
        the engine. Returns how many steps changed."""
        changed = 0
        for obj in engine.objects.values():
            for index, state in enumerate(obj.history):
                if abs(index - obj.position) <= keep or not getattr(state, "logits", ()):
                    continue
                known = self._known(state)
                if known is None:
                    continue
                mask = known[1].mask
                held = dataclasses.replace(
                    state, logits=(), rois=tuple(state_rois(state)), initial_mask=mask if mask.box else None
                )
                obj.history[index] = held
                with self._lock:
                    self._steps[id(held)] = (held, dataclasses.replace(known[1], prompts=state_prompts(held)))
                changed += 1
        return changed

    def _known(self, state) -> tuple[object, SavedStep] | None:
        with self._lock:
            known = self._steps.get(id(state))
        return known if known is not None and known[0] is state else None


def restore_objects(engine: ObjectEngine, objects: tuple[SavedObject, ...], active: int | None) -> None:
    """Replace the engine's objects by saved ones (its image must be set) and repaint its label map."""
    volume = engine._require_image()
    engine.objects.clear()
    engine._region_cache.clear()
    state_type = type(engine._empty_state())
    for saved in objects:
        if saved.steps and saved.steps[0].mask.shape != tuple(volume.shape):
            raise ValueError(f"object {saved.label}'s masks have shape {saved.steps[0].mask.shape}, not {volume.shape}")
        engine._label_map.make_room(saved.label)
        history = [state_from_step(state_type, step) for step in saved.steps]
        engine.objects[saved.label] = SegmentObject(saved.label, saved.name, history, saved.position)
    engine.active = active if active in engine.objects else None
    engine._repaint([box for obj in engine.objects.values() for box in engine._boxes(obj.state)])


def state_prompts(state) -> dict[str, Any]:
    """A state's prompt fields as JSON values."""
    masks = MASK_FIELDS[type(state)]
    return {f.name: to_json(getattr(state, f.name)) for f in dataclasses.fields(state) if f.name not in masks}


def state_from_step(state_type: type, step: SavedStep):
    """A state of ``state_type`` with the step's prompts and its mask."""
    known = {f.name for f in dataclasses.fields(state_type)}
    prompts = {name: from_json(value) for name, value in step.prompts.items() if name in known}
    if state_type is session2d.SliceState:
        return state_type(**prompts, box=step.mask.box, bits=step.mask.packed_bits())
    return state_type(**prompts, initial_mask=step.mask if step.mask.box is not None else None)


def to_json(value) -> Any:
    """Dataclasses (tagged by type name), tuples, arrays, slices and scalars as JSON values."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {"@type": type(value).__name__} | {
            f.name: to_json(getattr(value, f.name)) for f in dataclasses.fields(value)
        }
    if isinstance(value, (tuple, list)):
        return [to_json(item) for item in value]
    if isinstance(value, np.ndarray):
        return {"@array": value.tolist(), "dtype": value.dtype.str}
    if isinstance(value, slice):
        return {"@slice": [value.start, value.stop]}
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return {"@dict": [[to_json(k), to_json(v)] for k, v in value.items()]}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"cannot save a prompt of type {type(value).__name__}")


def from_json(value) -> Any:
    """Inverse of :func:`to_json` (lists come back as tuples, as the frozen states hold them)."""
    if isinstance(value, list):
        return tuple(from_json(item) for item in value)
    if not isinstance(value, dict):
        return value
    if "@array" in value:
        return np.array(value["@array"], dtype=np.dtype(value["dtype"]))
    if "@slice" in value:
        return slice(*value["@slice"])
    if "@dict" in value:
        return {from_json(k): from_json(v) for k, v in value["@dict"]}
    kind = JSON_TYPES.get(value.get("@type"))
    if kind is None:
        raise ValueError(f"unknown saved type {value.get('@type')!r}")
    return kind(**{name: from_json(item) for name, item in value.items() if name != "@type"})
