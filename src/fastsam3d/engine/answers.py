"""What an engine answers: an :class:`Interaction` (the label-map box it changed and its
:class:`Timings`), :class:`Progress` events of a long interaction, and an :class:`Uncertainty` map."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from .labelmap import Slices

ENTROPY_CHUNK = 2**18  # values binary_entropy computes at a time (1 MB of float32)


@dataclass
class Timings:
    """Seconds spent by the last interaction, by stage (``slices``: 2D slices segmented)."""

    encoder: float = 0.0
    decoder: float = 0.0
    paste: float = 0.0
    slices: int = 0

    @property
    def total(self) -> float:
        return self.encoder + self.decoder + self.paste

    def __add__(self, other: Timings) -> Timings:
        return Timings(
            self.encoder + other.encoder,
            self.decoder + other.decoder,
            self.paste + other.paste,
            self.slices + other.slices,
        )


@dataclass(frozen=True)
class Interaction:
    """The answer of one interaction: the box of the label-map voxels it changed (None: nothing
    changed) and its timings."""

    changed_region: Slices | None
    timings: Timings


@dataclass(frozen=True)
class Progress:
    """A long interaction's progress (2D propagation): ``done`` slices of ``total`` (None when the
    object's extent is not known yet); ``region`` is the label-map box of the slice just segmented
    and ``values`` the label values it will show."""

    done: int
    total: int | None
    region: Slices | None = None
    values: np.ndarray | None = field(default=None, repr=False)


ProgressCallback = Callable[[Progress], None]


@dataclass(frozen=True)
class Uncertainty:
    """Per-voxel mean probability and entropy (bits) on the input voxels inside ``box``."""

    box: Slices
    probability: np.ndarray = field(repr=False)
    entropy: np.ndarray = field(repr=False)

    def full(self, which: str, shape: tuple[int, int, int]) -> np.ndarray:
        """``"probability"`` or ``"entropy"`` as a full-size float32 map (0 outside ``box``)."""
        values = np.zeros(shape, dtype=np.float32)
        values[self.box] = getattr(self, which)
        return values


def binary_entropy(p: np.ndarray) -> np.ndarray:
    """Entropy in bits of a foreground probability (0 where it is 0: outside the estimate), float32.
    Computed ``ENTROPY_CHUNK`` values at a time: a ROI-sized map is tens of MB, and whole-map
    temporaries added three of them to a session's peak (a student's: 576 -> 660 MB)."""
    values = np.ascontiguousarray(p, dtype=np.float32).reshape(-1)
    entropy = np.empty(values.shape, dtype=np.float32)
    for first in range(0, values.size, ENTROPY_CHUNK):
        chunk = values[first : first + ENTROPY_CHUNK]
        out = entropy[first : first + ENTROPY_CHUNK]
        q = np.clip(chunk, 1e-7, 1 - 1e-7)
        rest = np.subtract(1, q, dtype=np.float32)
        np.log2(q, out=out)
        out *= q
        np.log2(rest, out=q)
        q *= rest
        out += q
        np.negative(out, out=out)
        out[chunk <= 0] = 0.0
    return entropy.reshape(np.shape(p))
