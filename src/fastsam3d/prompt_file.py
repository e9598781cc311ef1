"""Prompt files: several named objects, each with a label value and its prompts in order, as JSON.

::

    {"frame": "voxel",
     "objects": [{"name": "liver", "label": 1,
                  "prompts": [{"click": [i, j, k], "positive": true},
                              {"box": [[i, j, k], [i, j, k]]},
                              {"scribble": [[i, j, k], [i, j, k], ...], "positive": true},
                              {"lasso": [[i, j, k], [i, j, k], [i, j, k], ...], "positive": false}]}]}

``frame`` is ``"voxel"`` (input index i, j, k; the default), ``"lps"`` or ``"ras"`` (world mm), and a
prompt may give its own ``"frame"``; ``positive`` defaults to true. :func:`read_prompt_file` checks the whole file, :func:`locate` checks every point
against an image, :func:`apply_prompts` replays the prompts on an engine in the file's order. Every
problem is a one-line :class:`~fastsam3d.errors.PromptError` naming the object and prompt.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import get_args

import numpy as np

from .engine.answers import Interaction
from .engine.base import Frame, voxel_index
from .errors import PromptError
from .io import Volume

KINDS = {"click": (1, 1), "box": (2, 2), "scribble": (2, None), "lasso": (3, None)}  # points: (least, most)
MAX_LABEL = 65535


@dataclass(frozen=True)
class Prompt:
    """One prompt: ``points`` is (N, 3) in ``frame`` (input voxels once located)."""

    kind: str
    points: np.ndarray
    positive: bool = True
    frame: Frame = "voxel"


@dataclass(frozen=True)
class ObjectPrompts:
    """A named object, the label value it gets in the output, and its prompts in order."""

    name: str
    label: int
    prompts: tuple[Prompt, ...]


@dataclass(frozen=True)
class PromptFile:
    frame: Frame
    objects: tuple[ObjectPrompts, ...]


def read_prompt_file(path: str | Path) -> PromptFile:
    """Read and fully check a prompt file (structure, names, labels, point counts)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except OSError as error:
        raise PromptError(f"cannot read the prompt file {path}: {error.strerror}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise PromptError(f"{path} is not valid JSON: {error}") from None
    try:
        return parse_prompts(data)
    except PromptError as error:
        raise PromptError(f"{path}: {error}") from None


def parse_prompts(data: object) -> PromptFile:
    """A prompt file's JSON value as a checked :class:`PromptFile`."""
    if not isinstance(data, dict):
        raise PromptError('the file must hold a JSON object {"frame": ..., "objects": [...]}')
    unknown = sorted(set(data) - {"frame", "objects"})
    if unknown:
        raise PromptError(f"unknown key {unknown[0]!r} (keys: frame, objects)")
    frame = data.get("frame", "voxel")
    if frame not in get_args(Frame):
        raise PromptError(f"frame {frame!r} is not one of {', '.join(get_args(Frame))}")
    entries = data.get("objects")
    if not isinstance(entries, list) or not entries:
        raise PromptError('"objects" must be a non-empty list')
    objects = tuple(_parse_object(entry, number, frame) for number, entry in enumerate(entries, start=1))
    for key in ("name", "label"):
        values = [getattr(obj, key) for obj in objects]
        repeated = next((v for v in values if values.count(v) > 1), None)
        if repeated is not None:
            raise PromptError(f"two objects have the {key} {repeated!r}")
    return PromptFile(frame, objects)


def _parse_object(entry: object, number: int, frame: Frame) -> ObjectPrompts:
    where = f"object {number}"
    if not isinstance(entry, dict):
        raise PromptError(f'{where}: must be a JSON object {{"name": ..., "label": ..., "prompts": [...]}}')
    name = entry.get("name", f"object {number}")
    where = f"object {number} ({name!r})"
    unknown = sorted(set(entry) - {"name", "label", "prompts"})
    if unknown:
        raise PromptError(f"{where}: unknown key {unknown[0]!r} (keys: name, label, prompts)")
    if not isinstance(name, str) or not name.strip():
        raise PromptError(f"{where}: the name must be a non-empty string")
    label = entry.get("label", number)
    if isinstance(label, bool) or not isinstance(label, int) or not 1 <= label <= MAX_LABEL:
        raise PromptError(f"{where}: the label must be an integer from 1 to {MAX_LABEL}, got {label!r}")
    prompts = entry.get("prompts", [])
    if not isinstance(prompts, list):
        raise PromptError(f'{where}: "prompts" must be a list')
    parsed = tuple(_parse_prompt(prompt, f"{where}, prompt {index}", frame) for index, prompt in enumerate(prompts, 1))
    return ObjectPrompts(name.strip(), label, parsed)


def _parse_prompt(entry: object, where: str, frame: Frame) -> Prompt:
    if not isinstance(entry, dict):
        raise PromptError(f'{where}: must be a JSON object such as {{"click": [i, j, k]}}')
    kinds = [key for key in entry if key in KINDS]
    unknown = sorted(set(entry) - set(KINDS) - {"positive", "frame"})
    if len(kinds) != 1 or unknown:
        raise PromptError(f"{where}: give exactly one of {', '.join(KINDS)} (and optionally positive, frame)")
    frame = entry.get("frame", frame)
    if frame not in get_args(Frame):
        raise PromptError(f"{where}: frame {frame!r} is not one of {', '.join(get_args(Frame))}")
    kind = kinds[0]
    positive = entry.get("positive", True)
    if not isinstance(positive, bool):
        raise PromptError(f"{where}: positive must be true or false, got {positive!r}")
    if kind == "box" and "positive" in entry:
        raise PromptError(f"{where}: a box has no positive flag")
    value = entry[kind]
    if kind == "click":
        value = [value]
    try:
        points = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        points = np.empty((0,))
    if points.ndim != 2 or points.shape[1] != 3 or not np.isfinite(points).all():
        shape = "[x, y, z]" if kind == "click" else "a list of [x, y, z] points"
        raise PromptError(f"{where}: a {kind} is {shape} (three numbers each)")
    least, most = KINDS[kind]
    if len(points) < least or (most is not None and len(points) > most):
        count = f"{least}" if least == most else f"at least {least}"
        raise PromptError(f"{where}: a {kind} needs {count} points, got {len(points)}")
    return Prompt(kind, points, positive, frame)


def locate(objects: tuple[ObjectPrompts, ...], volume: Volume) -> tuple[ObjectPrompts, ...]:
    """The objects with every point as an input voxel index, each checked to lie in ``volume``
    (a lasso also on one slice), before any prompt runs."""
    located = []
    for number, obj in enumerate(objects, start=1):
        moved = []
        for index, prompt in enumerate(obj.prompts, start=1):
            where = f"object {number} ({obj.name!r}), prompt {index} ({prompt.kind})"
            try:
                points = np.stack([voxel_index(volume, point, prompt.frame) for point in prompt.points])
            except PromptError as error:
                raise PromptError(f"{where}: {error}") from None
            if prompt.kind == "lasso" and not _on_one_slice(points):
                raise PromptError(f"{where}: the lasso's points must all lie on one slice")
            moved.append(replace(prompt, points=points, frame="voxel"))
        located.append(replace(obj, prompts=tuple(moved)))
    return tuple(located)


def _on_one_slice(points: np.ndarray) -> bool:
    rounded = np.round(points)
    return bool(np.any(np.all(rounded == rounded[0], axis=0)))


def apply_prompts(session, obj: ObjectPrompts, label: int) -> list[tuple[str, Interaction]]:
    """Replay one located object's prompts (input voxels) on engine object ``label``, in order;
    returns a description and the answer of each step."""
    steps = []
    for prompt in obj.prompts:
        sign = "+" if prompt.positive else "-"
        if prompt.kind == "click":
            answer = session.add_click(prompt.points[0], prompt.positive, label=label)
            description = f"click {sign} {','.join(f'{c:g}' for c in prompt.points[0])}"
        elif prompt.kind == "box":
            answer = session.set_box(prompt.points[0], prompt.points[1], label=label)
            description = "box"
        elif prompt.kind == "scribble":
            answer = session.add_scribble(prompt.points, prompt.positive, frame="voxel", label=label)
            description = f"scribble {sign} ({len(prompt.points)} points)"
        else:
            answer = session.add_lasso(prompt.points, prompt.positive, frame="voxel", label=label)
            description = f"lasso {sign} ({len(prompt.points)} points)"
        steps.append((f"{obj.name}: {description}", answer))
    return steps
