"""SAM-Med3D-style interactive training: click rounds, error-region clicks, previous logits fed back.

Per batch the encoder runs once; then ``rounds`` click rounds: round 1 is one include click
inside the target (or, for models with box embeddings, sometimes a jittered box), every later
round adds a click in the current error (interior of the larger of false negatives / false
positives, sampled on the low-res grid), all clicks so far go in as points and the previous
low-res logits as the mask prompt. Loss: soft Dice + class-balanced BCE, averaged over rounds,
on logits upsampled to ``loss_size``³ (the crop size reproduces SAM-Med3D; half of it is 8×
cheaper on a CPU and loses little: the logits themselves are crop/4).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..clicks import center_click, deepest_error, dice
from ..modeling import Sam3D


def sample_error_click(prediction: np.ndarray, target: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, int]:
    """A click inside the larger error region (by depth), drawn from its inner core (depth > max/2).

    Works on any grid; returns (index (3,), label 1 = include / 0 = exclude).
    """
    found = deepest_error(prediction, target)
    if found is None:  # perfect: repeat an include click inside the target
        if not target.any():
            return np.array(target.shape) // 2, 1
        found = deepest_error(np.zeros_like(target), target)
    depth, offset, positive = found
    candidates = np.argwhere(depth > depth.max() / 2) + offset
    return candidates[rng.integers(len(candidates))], int(positive)


def dice_bce_loss(logits: torch.Tensor, target: torch.Tensor, max_positive_weight: float = 1.0) -> torch.Tensor:
    """Soft Dice + BCE, as SAM-Med3D's DiceCE. ``max_positive_weight`` > 1 up-weights foreground
    voxels to the background's share (at most that much); it moves the decision threshold to
    p > 1 / (1 + weight) and so makes models over-segment (the compact teacher, trained with 50,
    painted whole volumes around a small ball): plain BCE (1) is the default."""
    probability = torch.sigmoid(logits)
    intersection = (probability * target).flatten(1).sum(1)
    denominator = probability.flatten(1).sum(1) + target.flatten(1).sum(1)
    dice_loss = 1 - (2 * intersection + 1) / (denominator + 1)
    foreground = target.mean().clamp_min(1e-6)
    positive_weight = ((1 - foreground) / foreground).clamp(1.0, max_positive_weight)
    return dice_loss.mean() + F.binary_cross_entropy_with_logits(logits, target, pos_weight=positive_weight)


class InteractiveLoss(nn.Module):
    """A :class:`Sam3D` with its interactive training objective as ``forward`` (what DDP wraps).

    ``forward(images, targets, rng)`` -> (mean loss over rounds, batch Dice after each round).
    """

    def __init__(
        self,
        model: Sam3D,
        rounds: int = 3,
        box_rate: float = 0.2,
        loss_size: int | None = 64,
        autocast: torch.dtype | None = None,
        max_positive_weight: float = 1.0,
    ) -> None:
        super().__init__()
        self.model, self.rounds, self.box_rate, self.autocast = model, rounds, box_rate, autocast
        self.max_positive_weight = max_positive_weight
        self.loss_size = min(loss_size or model.img_size, model.img_size)

    def forward(
        self, images: torch.Tensor, targets: torch.Tensor, rng: np.random.Generator
    ) -> tuple[torch.Tensor, list[float]]:
        model, device = self.model, images.device
        batch, low_res = images.shape[0], model.low_res_size
        factor = model.img_size // low_res[0]
        targets_low = (F.adaptive_max_pool3d(targets, low_res)[:, 0] > 0.5).cpu().numpy()  # thin targets stay visible
        targets_loss = targets if self.loss_size == model.img_size else F.adaptive_avg_pool3d(targets, self.loss_size)
        with self._mixed_precision(device):
            embedding = model.encode(images)
        previous = torch.zeros(batch, 1, *low_res, device=device)
        points: list[list[np.ndarray]] = [[] for _ in range(batch)]
        labels: list[list[int]] = [[] for _ in range(batch)]
        boxes = (
            self._boxes(targets, rng) if model.prompt_encoder.supports_boxes and rng.random() < self.box_rate else None
        )
        losses, scores = [], []
        for round_index in range(self.rounds):
            predictions = (previous[:, 0] > 0).cpu().numpy()
            for b in range(batch):
                if round_index == 0 and boxes is not None:
                    continue
                index, label = sample_error_click(predictions[b], targets_low[b], rng)
                points[b].append(index * factor + (factor - 1) / 2 + rng.uniform(-1, 1, 3))
                labels[b].append(label)
            coords, point_labels = _pad_points(points, labels, device)
            with self._mixed_precision(device):
                logits, _ = model.decode(embedding, coords, point_labels, boxes, previous)
            logits = logits.float()
            resized = F.interpolate(logits, size=(self.loss_size,) * 3, mode="trilinear", align_corners=False)
            losses.append(dice_bce_loss(resized, targets_loss, self.max_positive_weight))
            previous = logits.detach()
            with torch.no_grad():
                hits = (resized > 0).flatten(1)
                truth = (targets_loss > 0.5).flatten(1)
                overlap = 2 * (hits & truth).sum(1) / (hits.sum(1) + truth.sum(1)).clamp_min(1)
                scores.append(float(overlap.mean()))
        return torch.stack(losses).mean(), scores

    def _mixed_precision(self, device: torch.device) -> torch.autocast:
        return torch.autocast(device.type, dtype=self.autocast or torch.bfloat16, enabled=self.autocast is not None)

    @staticmethod
    def _boxes(targets: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        corners = []
        for target in (targets[:, 0] > 0.5).cpu().numpy():
            where = np.argwhere(target)
            corners.append(np.concatenate([where.min(0), where.max(0)]) + rng.normal(0, 2, 6))
        return torch.tensor(np.array(corners), dtype=torch.float32, device=targets.device)


def _pad_points(points: list[list[np.ndarray]], labels: list[list[int]], device: torch.device):
    """(B, N, 3) coordinates and (B, N) labels, rows padded with label -1; (None, None) if no clicks."""
    count = max(len(p) for p in points)
    if count == 0:
        return None, None
    coords = torch.zeros(len(points), count, 3)
    point_labels = torch.full((len(points), count), -1, dtype=torch.int64)
    for b, (row, row_labels) in enumerate(zip(points, labels, strict=True)):
        if row:
            coords[b, : len(row)] = torch.tensor(np.array(row), dtype=torch.float32)
            point_labels[b, : len(row_labels)] = torch.tensor(row_labels)
    return coords.to(device), point_labels.to(device)


@torch.no_grad()
def validate(model: Sam3D, samples: list[tuple[torch.Tensor, torch.Tensor]], clicks: int = 5) -> list[float]:
    """Mean Dice per click with deterministic centre clicks (interior-most voxel of the largest error)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    per_click = np.zeros(clicks)
    for image, target in samples:
        truth = target[0].numpy() > 0.5
        embedding = model.encode(image[None].to(device))
        previous = torch.zeros(1, 1, *model.low_res_size, device=device)
        points, labels = [], []
        prediction = np.zeros_like(truth)
        for index in range(clicks):
            click = center_click(prediction, truth)
            if click is not None:
                points.append(click[0].astype(np.float32))
                labels.append(int(click[1]))
                coords = torch.tensor(np.array(points), device=device)[None]
                previous, _ = model.decode(embedding, coords, torch.tensor([labels], device=device), None, previous)
                prediction = model.upsample(previous)[0, 0].cpu().numpy() > 0
            per_click[index] += dice(prediction, truth)
    model.train(was_training)
    return list(per_click / max(len(samples), 1))
