"""Per-ROI prediction with a 3D SAM, the ``segment_anything`` ``SamPredictor`` analogue.

    predictor = RoiPredictor(model)
    predictor.set_image(volume)
    logits, scores = predictor.predict(roi, points, labels)   # first call in a ROI runs the encoder
    logits, scores = predictor.predict(roi, more_points, more_labels, mask_input=logits)  # decoder only

Prompts are given on the input grid (voxel indices (i, j, k), boxes as two opposite corners);
the predictor maps them into the ROI (:class:`~fastsam3d.engine.roi.RoiGrid`) and runs the prompt
encoder and mask decoder on the ROI's cached image embedding. Logits come back on the ROI's
low-res grid, (B, 1, L, L, L), ready to be fed back as ``mask_input`` or pasted onto the input
voxels with :meth:`RoiGrid.paste_logits` / :meth:`RoiGrid.paste_mask`.
"""

from __future__ import annotations

import time
from collections import OrderedDict

import numpy as np
import torch

from ..io import Volume
from ..modeling import Sam3D
from .answers import Timings
from .cache import CacheView, nbytes
from .labelmap import PackedMask, RegionView
from .roi import RoiGrid, normalise_intensity

MASK_PROMPT_LOGIT = 8.0  # logit magnitude given to a user-supplied initial mask (inside +, outside -)
UNCERTAINTY_BATCH = 4  # decoder runs per batched call: bounds memory, keeps the speed of batching


class RoiPredictor:
    """Image embeddings per ROI, computed once and kept (LRU, at most ``cache_size`` entries and
    ``cache_mb`` megabytes; the newest is always kept), and the prompt path on top of them.

    ``timings`` (a :class:`Timings`) collects encoder and decoder seconds; the caller replaces it
    at the start of each interaction.
    """

    def __init__(
        self,
        model: Sam3D,
        device: torch.device,
        cache_size: int = 8,
        cache_mb: float = 512.0,
        embeddings: CacheView | None = None,
    ) -> None:
        self.model = model
        self.device = device
        self.cache_size = cache_size
        self.cache_bytes = int(cache_mb * 2**20)
        self.volume: Volume | None = None
        self.timings = Timings()
        self.encoder_runs = 0
        self.decoder_runs = 0
        # the embeddings by ROI key: a view of a cache shared with other sessions (fastsam3d.engine.cache), or its own
        self._embeddings: OrderedDict[tuple, torch.Tensor] | CacheView = (
            OrderedDict() if embeddings is None else embeddings
        )

    def set_image(self, volume: Volume) -> None:
        """Take a new volume; forgets every cached embedding."""
        self.volume = volume
        self._embeddings.clear()

    def roi_at(self, centre_index: np.ndarray, spacing: float | None = None) -> RoiGrid:
        """The model's ROI centred on an input voxel index, at ``spacing`` mm (default: the model's)."""
        spacing = spacing or self.model.roi_spacing
        return RoiGrid.centred(self.volume, centre_index, size=self.model.img_size, spacing=spacing)

    def is_cached(self, roi: RoiGrid) -> bool:
        return roi.key in self._embeddings

    def cached_bytes(self) -> int:
        """Memory held by the cached ROI embeddings."""
        return sum(nbytes(embedding) for embedding in self._embeddings.values())

    def embedding(self, roi: RoiGrid) -> torch.Tensor:
        """The image embedding of a ROI, computed once and cached (LRU)."""
        key = roi.key
        if key in self._embeddings:
            self._embeddings.move_to_end(key)
            return self._embeddings[key]
        started = time.perf_counter()
        crop = roi.extract(self.volume.array, outside=self.model.roi_padding)
        if not getattr(self.model, "rescaling_invariant", False):
            crop = normalise_intensity(crop, in_place=True)
        with torch.inference_mode():
            embedding = self.model.encode(crop[None, None].to(self.device))
        self._synchronize()
        self.timings.encoder += time.perf_counter() - started
        self.encoder_runs += 1
        self._embeddings[key] = embedding
        while len(self._embeddings) > 1 and (
            len(self._embeddings) > self.cache_size or self.cached_bytes() > self.cache_bytes
        ):
            self._embeddings.popitem(last=False)
        return embedding

    def points_in_roi(self, roi: RoiGrid, points: np.ndarray, labels: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, 3) input voxel indices and their labels (1 include, 0 exclude) -> coords (1, N, 3)
        in ROI voxels and labels (1, N), as the prompt encoder takes them."""
        coords = roi.index_to_roi(np.asarray(points, dtype=np.float64).reshape(-1, 3)).astype(np.float32)
        return (
            torch.from_numpy(coords[None]).to(self.device),
            torch.tensor([list(labels)], dtype=torch.int64, device=self.device),
        )

    def box_in_roi(self, roi: RoiGrid, box: tuple | None) -> torch.Tensor | None:
        """Two opposite input-voxel corners -> the (1, 6) ROI box the prompt encoder takes; None when
        there is no box or the model has no box embeddings."""
        if box is None or not self.model.supports_boxes:
            return None
        corners = roi.index_to_roi(np.array(box, dtype=np.float64))
        return torch.tensor(
            np.concatenate([corners.min(0), corners.max(0)]).astype(np.float32)[None], device=self.device
        )

    def mask_prompt(self, roi: RoiGrid, mask: PackedMask) -> torch.Tensor:
        """An input-grid mask sampled onto the ROI's low-res grid, as (1, 1, L, L, L) logits (only
        the input block the ROI covers is read)."""
        view = RegionView(mask.shape, mask.region())
        fraction = roi.low_res_grid(self.model.low_res_size[0]).extract(view)
        return ((fraction - 0.5) * 2 * MASK_PROMPT_LOGIT)[None, None].to(self.device)

    def empty_mask_prompt(self) -> torch.Tensor:
        return torch.zeros(1, 1, *self.model.low_res_size, device=self.device)

    def decode(
        self,
        roi: RoiGrid,
        coords: torch.Tensor,
        labels: torch.Tensor,
        boxes: torch.Tensor | None,
        mask_input: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompt encoder + mask decoder on the ROI's (cached) embedding, for a batch of ROI-frame
        prompts: coords (B, N, 3), labels (B, N), boxes (B, 6) or None, mask_input (B, 1, L, L, L).
        Returns low-res logits (B, 1, L, L, L) and predicted IoU (B, 1)."""
        embedding = self.embedding(roi)
        started = time.perf_counter()
        with torch.inference_mode():
            logits, scores = self.model.decode(embedding, coords, labels, boxes=boxes, mask_input=mask_input)
        self._synchronize()
        self.decoder_runs += 1
        self.timings.decoder += time.perf_counter() - started
        return logits, scores

    def predict(
        self,
        roi: RoiGrid,
        points: np.ndarray,
        labels: list[int],
        box: tuple | None = None,
        mask_input: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits (1, 1, L, L, L) and predicted IoU (1, 1) of input-grid prompts in one ROI:
        ``points`` (N, 3) voxel indices with ``labels`` (1 include, 0 exclude), an optional box
        (two opposite corner voxels) and the previous low-res logits as ``mask_input``."""
        coords, label_tensor = self.points_in_roi(roi, points, labels)
        mask_input = self.empty_mask_prompt() if mask_input is None else mask_input.float()
        return self.decode(roi, coords, label_tensor, self.box_in_roi(roi, box), mask_input)

    def mean_probability(
        self,
        roi: RoiGrid,
        points: np.ndarray,
        labels: list[int],
        box: tuple | None,
        previous: torch.Tensor,
        samples: int,
        jitter: float,
        generator: torch.Generator,
    ) -> torch.Tensor:
        """Mean foreground probability (L, L, L) over ``samples`` decoder runs on the ROI's cached
        embedding, each with every point moved by up to ``jitter`` ROI voxels per axis (batched)."""
        coords, label_tensor = self.points_in_roi(roi, points, labels)
        embedding, boxes = self.embedding(roi), self.box_in_roi(roi, box)
        total = torch.zeros(previous.shape[2:], device=self.device)
        for first in range(0, samples, UNCERTAINTY_BATCH):
            batch = min(UNCERTAINTY_BATCH, samples - first)
            noise = (torch.rand((batch, *coords.shape[1:]), generator=generator) * 2 - 1) * jitter
            jittered = (coords.expand(batch, -1, -1) + noise.to(self.device)).clamp(0, roi.size - 1)
            with torch.inference_mode():
                logits, _ = self.model.decode(
                    embedding,
                    jittered,
                    label_tensor.expand(batch, -1),
                    boxes=None if boxes is None else boxes.expand(batch, -1),
                    mask_input=previous.float().expand(batch, -1, -1, -1, -1),
                )
            total += torch.sigmoid(logits[:, 0].float()).sum(0)
        return (total / samples).clamp(1e-6, 1 - 1e-6)

    def _synchronize(self) -> None:
        """Wait for queued GPU work, so that a stage's time is its own and not the next one's."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
