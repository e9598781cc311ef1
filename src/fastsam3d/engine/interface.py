"""The interface every interactive engine implements: :class:`~fastsam3d.engine.session3d.Session` (3D models)
and :class:`~fastsam3d.engine.session2d.SliceSession` (2D models slice by slice) take the same verbs with
the same signatures and defaults, so the CLI, the server, napari and Slicer drive both alike.
Open one with :func:`open_session` (below). An engine may add keyword-only options of
its own (``Session.add_click(..., roi_centre=)``)."""

from __future__ import annotations

import time
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import torch

from ..io import Volume
from ..registry import spatial_dims
from .answers import Interaction, ProgressCallback, Timings, Uncertainty
from .base import Frame, SegmentObject
from .strokes import Stroke


@runtime_checkable
class Engine(Protocol):
    """One volume, several objects (label values 1, 2, ...), one undo history per object."""

    dims: int  # 3: a 3D model; 2: a 2D model run slice by slice
    precision: str
    volume: Volume | None
    objects: dict[int, SegmentObject]
    active: int | None
    timings: Timings  # of the last interaction
    progress: ProgressCallback | None

    def set_image(self, image: Volume | str | Path) -> Volume: ...
    def add_object(self, name: str | None = None) -> int: ...
    def select(self, label: int) -> None: ...
    def remove_object(self, label: int) -> Interaction: ...
    def add_click(
        self, point, positive: bool = True, *, frame: Frame = "voxel", label: int | None = None
    ) -> Interaction: ...
    def add_clicks(self, points, positives, *, frame: Frame = "voxel", label: int | None = None) -> Interaction: ...
    def add_scribble(
        self, points, positive: bool = True, *, frame: Frame = "voxel", label: int | None = None
    ) -> Interaction: ...
    def add_lasso(
        self, polygon, positive: bool = True, *, frame: Frame = "voxel", label: int | None = None
    ) -> Interaction: ...
    def add_stroke(self, stroke: Stroke, *, label: int | None = None) -> Interaction: ...
    def set_box(
        self, corner_a, corner_b, *, label: int | None = None, depth_mm: float | None = None
    ) -> Interaction: ...
    def set_mask(self, mask: np.ndarray, *, label: int | None = None) -> Interaction: ...
    def undo(self, label: int | None = None) -> Interaction | None: ...
    def redo(self, label: int | None = None) -> Interaction | None: ...
    def reset(self, label: int | None = None) -> Interaction: ...
    def transaction(self) -> AbstractContextManager[None]: ...
    def needs_encoder(self, point, *, label: int | None = None) -> bool: ...
    def mask(self, label: int | None = None) -> np.ndarray: ...
    def label_map(self) -> np.ndarray: ...
    def probability(self, label: int | None = None) -> np.ndarray: ...
    def uncertainty(
        self, samples: int = 16, jitter_mm: float = 3.0, seed: int = 0, label: int | None = None
    ) -> Uncertainty: ...
    def volume_ml(self, label: int | None = None) -> float: ...
    def save_labels(self, path: str | Path) -> Path: ...
    def save_map(self, array: np.ndarray, path: str | Path) -> Path: ...
    def cached_bytes(self) -> int: ...


def open_session(
    model: str | Path | torch.nn.Module = "default",
    checkpoint: str | Path | None = None,
    device: str | torch.device | None = None,
    **options,
) -> Engine:
    """The engine for any model: a 2D SAM (a name such as ``litemedsam``, ``medsam``,
    ``sam-vit-b``, ``sam-med2d``, or a loaded 2D model) runs slice by slice in a
    :class:`~fastsam3d.engine.session2d.SliceSession`, every other model in a 3D
    :class:`~fastsam3d.engine.session3d.Session`; both take the same verbs and answer alike. The
    one door of the CLI, the server and the napari plugin. ``options`` go to the engine."""
    from .session2d import SliceSession
    from .session3d import Session

    if isinstance(model, torch.nn.Module):
        dims = getattr(model, "spatial_dims", None) or getattr(getattr(model, "config", None), "spatial_dims", 3)
    else:
        dims = spatial_dims(model)
    if dims == 2:
        return SliceSession(
            model if isinstance(model, torch.nn.Module) else str(model), device, checkpoint=checkpoint, **options
        )
    return Session(model, device, checkpoint=checkpoint, **options)


WARM_UP_SHAPE = (48, 48, 24)  # voxels of the synthetic volume warm_up clicks in (1.5 mm); 2D models: one slice


def warm_up(model: torch.nn.Module, device: str | torch.device | None = None) -> float:
    """Prompt a loaded model once (a box) on a small synthetic volume (a bright ball), so that a user's
    first click does not pay the model's first-call costs: oneDNN generating its kernels for each
    layer's shapes, and lazy imports. On the 2-core AVX2 CPU a first click of ``default`` took 451 ms
    cold and 195 ms after one (encoder 391 -> 152 ms). Returns the seconds it took."""
    started = time.perf_counter()
    probe_session(model, device)
    return time.perf_counter() - started


def probe_session(model: torch.nn.Module, device: str | torch.device | None = None) -> Engine:
    """An engine on a small synthetic volume (a bright ball, 1.5 mm) after one box prompt on the ball:
    a first click as a user makes it, for :func:`warm_up` and :mod:`fastsam3d.tuning`."""
    session = open_session(model, device=device)
    shape = WARM_UP_SHAPE if session.dims == 3 else (*WARM_UP_SHAPE[:2], 1)  # 2D: nothing to propagate into
    i, j, k = np.ogrid[tuple(slice(0, n) for n in shape)]
    centre = [n // 2 for n in shape]
    ball = (i - centre[0]) ** 2 + (j - centre[1]) ** 2 + (k - centre[2]) ** 2 <= 64
    session.set_image(Volume(np.where(ball, 200, 40).astype(np.int16), np.full(3, 1.5), np.zeros(3), np.eye(3)))
    session.add_object()
    low, high = [max(c - 6, 0) for c in centre], [c + 6 if n > 1 else c for c, n in zip(centre, shape, strict=True)]
    session.set_box(low, high)  # a box: every model takes one first (box-only 2D models take nothing else)
    return session
