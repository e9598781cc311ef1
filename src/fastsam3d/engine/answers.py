"""What an engine answers: an :class:`Interaction` (the label-map box it changed and its
:class:`Timings`), :class:`Progress` events of a long interaction, and an :class:`Uncertainty` map."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from .labelmap import Slices


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
    """Entropy in bits of a foreground probability (0 where it is 0: outside the estimate); float32,
    with three float32 temporaries the size of ``p`` (a ROI-sized map is tens of MB)."""
    q = np.clip(p, 1e-7, 1 - 1e-7, dtype=np.float32)
    rest = np.subtract(1, q, dtype=np.float32)
    entropy = np.log2(q)
    entropy *= q
    np.log2(rest, out=q)
    q *= rest
    entropy += q
    np.negative(entropy, out=entropy)
    entropy[p <= 0] = 0.0
    return entropy
