"""Endless, exactly reproducible training streams of (image, target) crops.

A *source* draws one sample from a random generator: ``source.draw(rng) -> (image, target)``,
both ``(1, S, S, S)`` float32 (image normalised, target 0/1). :class:`IndexedStream` gives sample
``n`` its own generator seeded by ``(seed, n)``, so the stream is the same whatever the number
of loader workers, and a resumed run continues with exactly the samples an uninterrupted run
would have drawn. Under ``torchrun`` each rank takes its own interleaved share of the indices.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Protocol

import numpy as np
import torch

from ..engine.roi import normalise_intensity
from .shapes import SyntheticShapes

Sample = tuple[torch.Tensor, torch.Tensor]


class Source(Protocol):
    def draw(self, rng: np.random.Generator) -> Sample: ...


class SyntheticSource:
    """Domain-randomised synthetic crops (:class:`~fastsam3d.data.shapes.SyntheticShapes`).

    Targets have at least ``min_voxels`` voxels (1000: radius ~6 voxels, 1.5 low-res logit
    voxels; smaller ones cannot be drawn by crop/4 logits and only add noise to training).
    """

    def __init__(self, size: int, min_voxels: int = 1000) -> None:
        self.size, self.min_voxels = size, min_voxels

    def draw(self, rng: np.random.Generator) -> Sample:
        generator = SyntheticShapes(self.size, seed=int(rng.integers(1 << 62)))
        image, target = generator.sample_object(self.min_voxels)
        return normalise_intensity(torch.from_numpy(image))[None], torch.from_numpy(target)[None].float()


class MixedSource:
    """Draws from one of several sources, chosen with the given probabilities."""

    def __init__(self, sources: Sequence[Source], weights: Sequence[float]) -> None:
        if len(sources) != len(weights) or not sources or min(weights) < 0 or sum(weights) <= 0:
            raise ValueError("MixedSource needs one non-negative weight per source, not all zero")
        self.sources = list(sources)
        self.probabilities = np.asarray(weights, float) / sum(weights)

    def draw(self, rng: np.random.Generator) -> Sample:
        return self.sources[rng.choice(len(self.sources), p=self.probabilities)].draw(rng)


def sample_rng(seed: int, index: int) -> np.random.Generator:
    """The generator of sample ``index`` of a stream seeded with ``seed``."""
    return np.random.default_rng([seed, index])


class IndexedStream(torch.utils.data.IterableDataset):
    """Batches ``start_batch, start_batch + 1, ...`` of an endless stream, for one rank.

    Global batch ``j`` of rank ``r`` holds samples ``(j * world + r) * batch_size + b``. Loader
    worker ``w`` of ``W`` makes batches ``j ≡ w (mod W)``; the DataLoader takes them round-robin,
    so the order does not depend on ``W``. Use with ``DataLoader(batch_size=None)``.
    """

    def __init__(
        self, source: Source, batch_size: int, seed: int, start_batch: int = 0, rank: int = 0, world: int = 1
    ) -> None:
        self.source, self.batch_size, self.seed = source, batch_size, seed
        self.start_batch, self.rank, self.world = start_batch, rank, world

    def batch(self, index: int) -> Sample:
        first = (index * self.world + self.rank) * self.batch_size
        samples = [self.source.draw(sample_rng(self.seed, first + b)) for b in range(self.batch_size)]
        images, targets = zip(*samples, strict=True)
        return torch.stack(images), torch.stack(targets)

    def __iter__(self) -> Iterator[Sample]:
        worker = torch.utils.data.get_worker_info()
        offset, stride = (worker.id, worker.num_workers) if worker else (0, 1)
        index = self.start_batch + offset
        while True:
            yield self.batch(index)
            index += stride


def fixed_samples(source: Source, count: int, seed: int) -> list[Sample]:
    """``count`` deterministic samples (a validation set)."""
    return [source.draw(sample_rng(seed, index)) for index in range(count)]
