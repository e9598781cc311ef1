"""A 2D SAM on the slices of one volume (the 2D engine's SamPredictor): each slice's embedding
computed once and cached (float16, LRU bounded in MB, or a view of a feature cache shared by several
sessions), prompts mapped from slice pixels to the model input, logits mapped back to the slice grid."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

import numpy as np
import torch

from ..io import Volume
from ..modeling.sam2d import Sam2D
from ..runtime import apply_model_precision
from .answers import Timings
from .cache import CacheView
from .labelmap import Slices
from .slices import SlicePlane, box_of, intensity_window

EMBEDDING_DTYPE = torch.float16  # cached slice embeddings: half the memory


class SlicePredictor:
    """Embeddings and decoder passes of a 2D model on one volume's slices; stage times go to the
    running interaction's :class:`Timings` (``timings()``)."""

    def __init__(
        self,
        model: Sam2D,
        device: torch.device,
        timings: Callable[[], Timings],
        min_pixels: int,
        cache_mb: float,
        precision: str = "fp32",
        feature_cache: CacheView | None = None,
    ) -> None:
        self.model, self.config, self.device = model, model.config, device
        if precision not in ("auto", getattr(model, "precision", "fp32")):  # "auto": a model object stays as it is
            apply_model_precision(model, precision, device)  # fastsam3d.runtime: int8 / bf16 / ONNX image encoder
        self.precision = getattr(model, "precision", "fp32")
        self._timings = timings
        self.min_pixels = min_pixels
        self.cache_bytes = int(cache_mb * 2**20)
        self.encoder_runs = 0
        self.decoder_runs = 0
        self._embeddings: OrderedDict[int, torch.Tensor] | CacheView = (
            OrderedDict() if feature_cache is None else feature_cache
        )

    def set_volume(self, volume: Volume, plane: SlicePlane) -> None:
        """A new volume: its intensity window, the slice geometry and no cached embedding."""
        self.volume, self.plane = volume, plane
        self._window = intensity_window(volume.array)
        self._embeddings.clear()
        self.geometry = plane.geometry(volume.spacing, self.config.img_size, self.model.low_res_size[0])
        self._to_model = [torch.from_numpy(m).float().to(self.device) for m in self.geometry.to_model()]
        self._from_low_res = [torch.from_numpy(m).float().to(self.device) for m in self.geometry.from_low_res()]

    def is_cached(self, index: int) -> bool:
        return index in self._embeddings

    def cached_bytes(self) -> int:
        """Memory held by the cached slice embeddings."""
        return sum(e.element_size() * e.nelement() for e in self._embeddings.values())

    def embedding(self, index: int) -> torch.Tensor:
        """The embedding of slice ``index``, computed once and cached (LRU, bounded in MB)."""
        if index in self._embeddings:
            self._embeddings.move_to_end(index)
            return self._embeddings[index]
        started = time.perf_counter()
        plane = torch.from_numpy(np.ascontiguousarray(self.plane.take(self.volume.array, index), dtype=np.float32))
        low, high = self._window
        plane = ((plane.to(self.device) - low) / max(high - low, 1e-6)).clamp_(0, 1)
        image = self._to_model[0] @ plane @ self._to_model[1].T
        low, high = image.min(), image.max()
        image = (image - low) / torch.clamp(high - low, min=1e-8) * self.config.pixel_scale
        mean = torch.tensor(self.config.pixel_mean, device=self.device).view(3, 1, 1)
        std = torch.tensor(self.config.pixel_std, device=self.device).view(3, 1, 1)
        rgb = (image.expand(3, -1, -1) - mean) / std
        size = self.config.img_size
        padded = torch.zeros(1, 3, size, size, device=self.device)
        padded[0, :, : rgb.shape[1], : rgb.shape[2]] = rgb
        with torch.inference_mode():
            embedding = self.model.encode(padded).to(EMBEDDING_DTYPE)
        self._timings().encoder += time.perf_counter() - started
        self.encoder_runs += 1
        self._embeddings[index] = embedding
        while len(self._embeddings) > 1 and self.cached_bytes() > self.cache_bytes:
            self._embeddings.popitem(last=False)
        return embedding

    def prompts(self, box=None, clicks=()) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
        """(boxes (1, 4), coords (1, N, 2), labels (1, N)) in model input pixels."""
        boxes = coords = labels = None
        if box is not None:
            x0, y0 = self.geometry.point_to_model(box[0], box[1])
            x1, y1 = self.geometry.point_to_model(box[2], box[3])
            boxes = torch.tensor([[x0, y0, x1, y1]], dtype=torch.float32, device=self.device)
        if clicks:
            coords = torch.tensor(
                [[self.geometry.point_to_model(r, c) for r, c, _ in clicks]], dtype=torch.float32, device=self.device
            )
            labels = torch.tensor([[int(p) for _, _, p in clicks]], device=self.device)
        return boxes, coords, labels

    def logits(self, index: int, boxes, coords, labels) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits (B, H, W) on the slice grid and predicted IoUs (B,) for a batch of prompts on
        slice ``index``."""
        embedding = self.embedding(index).float()
        started = time.perf_counter()
        with torch.inference_mode():
            low_res, scores = self.model.decode(embedding, coords, labels, boxes=boxes)
            logits = self._from_low_res[0] @ low_res[:, 0].float() @ self._from_low_res[1].T
        self.decoder_runs += 1
        self._timings().decoder += time.perf_counter() - started
        return logits, scores[:, 0]

    def segment(self, index: int, box=None, clicks=None, min_score: float = 0.0) -> np.ndarray | None:
        """Mask (H, W) of one slice from a (row0, col0, row1, col1) box and/or clicks; None if empty
        or if the model's predicted IoU is below ``min_score``."""
        logits, scores = self.logits(index, *self.prompts(box, clicks))
        plane = (logits[0] > 0).cpu().numpy()
        self._timings().slices += 1
        return plane if plane.sum() >= self.min_pixels and float(scores[0]) >= min_score else None

    def sampled_probability(
        self, index: int, box, clicks, samples: int, jitter_mm: float, generator: torch.Generator
    ) -> np.ndarray:
        """Mean foreground probability of one slice over copies of its prompts moved by up to
        ``jitter_mm`` (the first copy unmoved when ``samples`` is 1)."""
        boxes, coords, labels = self.prompts(box, clicks)
        pixel_mm = torch.tensor(self.model_pixel_mm(), dtype=torch.float32)  # (x, y) millimetres per model pixel
        spread = (jitter_mm / pixel_mm).repeat(2)
        boxes = boxes + (torch.rand((samples, 4), generator=generator) * 2 - 1) * spread
        if coords is not None:
            coords = coords + (torch.rand((samples, *coords.shape[1:]), generator=generator) * 2 - 1) * spread[:2]
            labels = labels.expand(samples, -1)
        return torch.sigmoid(self.logits(index, boxes, coords, labels)[0]).mean(0).cpu().numpy()

    def probability_in(
        self,
        box: Slices,
        mask: np.ndarray,
        clicks: dict,
        margin: int,
        samples: int,
        jitter_mm: float,
        generator: torch.Generator,
    ) -> np.ndarray:
        """Mean foreground probability inside ``box`` (input grid) of every slice where ``mask`` has
        voxels: each slice decoded ``samples`` times from its mask's box (plus ``margin``) and its
        ``clicks`` (slice index -> clicks), moved by up to ``jitter_mm``."""
        axis = self.plane.axis
        probability = np.zeros(tuple(s.stop - s.start for s in box), dtype=np.float32)
        one_slice = np.zeros(tuple(1 if a == axis else n for a, n in enumerate(mask.shape)), dtype=np.float32)
        in_plane = tuple(slice(0, 1) if a == axis else s for a, s in enumerate(box))
        for index in range(box[axis].start, box[axis].stop):
            plane = self.plane.take(mask, index)
            if plane.any():
                mean = self.sampled_probability(
                    index, box_of(plane, margin, plane.shape), clicks.get(index, ()), samples, jitter_mm, generator
                )
                self.plane.put(one_slice, 0, mean)
                target = [slice(None)] * 3
                target[axis] = slice(index - box[axis].start, index - box[axis].start + 1)
                probability[tuple(target)] = one_slice[in_plane]
        return probability

    def model_pixel_mm(self) -> tuple[float, float]:
        """Millimetres per model input pixel along x (columns) and y (rows)."""
        spacing = self.volume.spacing
        geometry = self.geometry
        return (
            float(spacing[self.plane.cols[0]]) * geometry.width / geometry.resized[1],
            float(spacing[self.plane.rows[0]]) * geometry.height / geometry.resized[0],
        )
