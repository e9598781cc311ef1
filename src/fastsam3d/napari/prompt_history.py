"""The napari plugin's prompt layers kept in step with the session's undo history.

Every prompt placed in the viewer (points in the points layer, a box, scribble or lasso in the
shapes layer) belongs to one step. Undoing an object's step takes its points and shapes out of the
layers (and keeps them); redoing it puts them back; a prompt the session refused is removed. The
layers stay in napari world coordinates: nothing here converts coordinates (see :mod:`.layers`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

INCLUDE, EXCLUDE = (0.0, 0.9, 0.0, 1.0), (1.0, 0.1, 0.1, 1.0)


@dataclass
class Step:
    """One interaction's prompts. While undone, ``points`` (N x 3 world), ``positives`` and
    ``shapes`` ((vertices, shape_type, edge colour) each) hold what was taken out of the layers."""

    label: int
    id: int
    points: np.ndarray = field(default_factory=lambda: np.empty((0, 3)))
    positives: list[bool] = field(default_factory=list)
    shapes: list[tuple[np.ndarray, str, np.ndarray]] = field(default_factory=list)


class PromptHistory:
    """Per-object done / undone steps, and which step each point and shape of the layers belongs to."""

    def __init__(self, points_layer, shapes_layer) -> None:
        self.points_layer, self.shapes_layer = points_layer, shapes_layer
        self.rows: list[tuple[int, int, bool]] = []  # per point of the points layer: (object, step id, positive)
        self.shape_steps: list[int] = []  # per shape of the shapes layer: its step id
        self.steps: dict[int, dict[str, list[Step]]] = {}  # object -> {"done": [...], "undone": [...]}
        self.next_id = 0
        self.syncing = False  # set while this class edits the layers (their events are ours, not the user's)

    def new_step(self, label: int) -> Step:
        step = Step(label, self.next_id)
        self.next_id += 1
        return step

    def new_points(self, label: int, positive: bool) -> tuple[Step, np.ndarray]:
        """The points placed since the last call, as one step (their world coordinates)."""
        data = np.asarray(self.points_layer.data).reshape(-1, 3)
        step = self.new_step(label)
        new = data[len(self.rows) :]
        self.rows += [(label, step.id, positive)] * len(new)
        self.paint()
        return step, new

    def new_shape(self, label: int) -> tuple[Step, np.ndarray, str]:
        """The next shape not yet sent, as one step: (step, world vertices, shape_type)."""
        index = len(self.shape_steps)
        step = self.new_step(label)
        self.shape_steps.append(step.id)
        return step, np.asarray(self.shapes_layer.data[index]), self.shapes_layer.shape_type[index]

    def pending_points(self) -> bool:
        return len(self.points_layer.data) > len(self.rows)

    def pending_shapes(self) -> bool:
        return len(self.shapes_layer.data) > len(self.shape_steps)

    def points_deleted(self) -> None:
        """Points deleted by hand: forget them (the session keeps their clicks)."""
        self.rows = self.rows[: len(self.points_layer.data)]

    def shapes_deleted(self, indices) -> None:
        """Shapes deleted by hand: forget them (the session keeps their prompts)."""
        gone = set(indices)
        self.shape_steps = [sid for index, sid in enumerate(self.shape_steps) if index not in gone]

    def done(self, step: Step) -> None:
        """A new interaction was applied: it can be undone; the object's redo steps are gone."""
        steps = self.steps.setdefault(step.label, {"done": [], "undone": []})
        steps["done"].append(step)
        steps["undone"].clear()

    def refused(self, step: Step) -> None:
        """The session refused the step's prompt: take its points and shapes out of the layers."""
        self._take(step)

    def move(self, label: int, direction: int) -> None:
        """Mirror an undo (-1) or redo (+1) of ``label`` that changed the session."""
        steps = self.steps.setdefault(label, {"done": [], "undone": []})
        source, target = (steps["done"], steps["undone"]) if direction < 0 else (steps["undone"], steps["done"])
        if not source:
            return
        step = source.pop()
        target.append(step)
        if direction < 0:
            self._take(step)
        else:
            self._put_back(step)

    def _take(self, step: Step) -> None:
        keep = [row for row, (_, sid, _) in enumerate(self.rows) if sid != step.id]
        removed = [row for row, (_, sid, _) in enumerate(self.rows) if sid == step.id]
        shapes = [index for index, sid in enumerate(self.shape_steps) if sid == step.id]
        data = np.asarray(self.points_layer.data).reshape(-1, 3)
        step.points, step.positives = data[removed], [self.rows[row][2] for row in removed]
        colours = np.asarray(self.shapes_layer.edge_color)
        step.shapes = [
            (np.asarray(self.shapes_layer.data[i]), self.shapes_layer.shape_type[i], colours[i]) for i in shapes
        ]
        with self._editing():
            if removed:
                self.points_layer.data = data[keep]
                self.rows = [self.rows[row] for row in keep]
            if shapes:
                self.shapes_layer.remove(shapes)
                self.shape_steps = [sid for sid in self.shape_steps if sid != step.id]

    def _put_back(self, step: Step) -> None:
        with self._editing():
            if len(step.points):
                data = np.asarray(self.points_layer.data).reshape(-1, 3)
                self.points_layer.data = np.concatenate([data, step.points])
                self.rows += [(step.label, step.id, positive) for positive in step.positives]
            for vertices, shape_type, colour in step.shapes:
                self.shapes_layer.add([vertices], shape_type=shape_type, edge_color=[colour])
                self.shape_steps.append(step.id)

    @contextmanager
    def _editing(self) -> Iterator[None]:
        self.syncing = True
        try:
            yield
        finally:
            self.points_layer.selected_data = set()  # indices into the old data
            self.shapes_layer.selected_data = set()
            self.syncing = False
            self.paint()

    def paint(self) -> None:
        """Colour each point by its own sign (napari colours new points with the current colour)."""
        if self.rows and len(self.rows) == len(self.points_layer.data):
            colours = np.array([INCLUDE if positive else EXCLUDE for _, _, positive in self.rows]).reshape(-1, 4)
            self.syncing, syncing = True, self.syncing
            try:
                self.points_layer.face_color = colours
            finally:
                self.syncing = syncing
