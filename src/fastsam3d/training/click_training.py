"""Interactive training of :class:`~fastsam3d.modeling.click_unet.ClickUNet3D` (the default model).

Per batch the image features are computed once; then a simulated user: the first prompt is an
include click deep inside the target (or, sometimes, a jittered box, a lasso tracing the target on
its largest slice or a scribble along its medial axis), then ``k`` corrective prompts (``k``
uniform in 0..``max_corrections``): clicks in the inner core of the larger error region, some of
them strokes on it, with all prompts and the previous logits fed back. The loss (BCE + soft Dice, with extra
weight on the clicked voxels so clicks are honoured) is taken after the first prompt and after
the last click; the rounds between run without gradient. Samples are drawn by index from a
seeded stream, so an interrupted run resumed from its checkpoint continues exactly.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from tqdm import tqdm

from ..data.streams import IndexedStream, sample_rng
from ..engine.roi import RoiGrid
from ..io import Volume, align_label, atomic_output, read_volume
from ..modeling.click_unet import ClickUNet3D, click_maps
from ..registry import build_model, load_model, save_model
from ..runtime import default_device
from ..simulated_strokes import stroke_points
from .interactive import _pad_points, sample_error_click, validate
from .trainer import CsvLog


@dataclass(frozen=True)
class ClickTrainSettings:
    steps: int = 2000
    batch_size: int = 2
    lr: float = 2e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 50
    max_corrections: int = 6
    box_rate: float = 0.15
    stroke_rate: float = 0.0  # share of first prompts that are a stroke (lasso or scribble), not a click
    corrective_stroke_rate: float = 0.0  # share of corrective prompts that are a stroke
    click_weight: float = 4.0  # extra BCE weight on the clicked voxels
    seed: int = 0
    validate_every: int = 250
    checkpoint_every: int = 50
    init: str | None = None  # start from these weights (e.g. "default" to continue the shipped model)
    minutes: float | None = None  # a wall-time budget: the schedule follows elapsed time and stops at it
    workers: int = 1  # processes synthesising crops while the model trains (0: in the training process)


def interactive_loss(
    model: ClickUNet3D,
    images: torch.Tensor,
    targets: torch.Tensor,
    settings: ClickTrainSettings,
    rng: np.random.Generator,
) -> tuple[torch.Tensor, float]:
    """Mean loss after the first prompt and after the last click; Dice after the last click."""
    batch, device = images.shape[0], images.device
    truth = (targets[:, 0] > 0.5).cpu().numpy()
    features = model.encode(images)
    points: list[list[np.ndarray]] = [[] for _ in range(batch)]
    labels: list[list[int]] = [[] for _ in range(batch)]
    boxes = None
    if rng.random() < settings.box_rate:
        corners = [
            np.concatenate([np.argwhere(t).min(0), np.argwhere(t).max(0)]) + rng.normal(0, 1.5, 6) for t in truth
        ]
        boxes = torch.tensor(np.array(corners), dtype=torch.float32, device=device)
    previous = torch.zeros_like(targets)  # zero logits: no previous mask (as the session passes)
    corrections = int(rng.integers(settings.max_corrections + 1))
    losses = []
    for round_index in range(corrections + 1):
        prediction = (previous[:, 0] > 0).cpu().numpy()
        if not (round_index == 0 and boxes is not None):
            stroke_rate = settings.stroke_rate if round_index == 0 else settings.corrective_stroke_rate
            for b in range(batch):
                stroke = (
                    stroke_points(prediction[b], truth[b], rng, _slice_axis(rng))
                    if rng.random() < stroke_rate
                    else None
                )
                if stroke is not None:
                    points[b] += list(stroke[0] + rng.uniform(-0.5, 0.5, stroke[0].shape))
                    labels[b] += stroke[1]
                    continue
                index, label = sample_error_click(prediction[b], truth[b], rng)
                points[b].append(index + rng.uniform(-0.5, 0.5, 3))
                labels[b].append(label)
        coords, point_labels = _pad_points(points, labels, device)
        graded = round_index in (0, corrections)
        with torch.set_grad_enabled(graded and torch.is_grad_enabled()):
            logits, _ = model.decode(features, coords, point_labels, boxes, previous, honour_clicks=False)
        if graded:
            losses.append(_loss(logits, targets, coords, point_labels, settings.click_weight))
        previous = logits.detach()
    with torch.no_grad():
        hits, truth_t = (previous > 0).flatten(1), (targets > 0.5).flatten(1)
        overlap = 2 * (hits & truth_t).sum(1) / (hits.sum(1) + truth_t.sum(1)).clamp_min(1)
    return torch.stack(losses).mean(), float(overlap.mean())


def _slice_axis(rng: np.random.Generator) -> int:
    """The ROI axis a simulated lasso's slice lies across: mostly axial (ROI axis 2, S-I), else another."""
    return 2 if rng.random() < 0.6 else int(rng.integers(2))


def _loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    coords: torch.Tensor | None,
    labels: torch.Tensor | None,
    click_weight: float,
) -> torch.Tensor:
    probability = torch.sigmoid(logits)
    intersection = (probability * targets).flatten(1).sum(1)
    dice_loss = 1 - (2 * intersection + 1) / (probability.flatten(1).sum(1) + targets.flatten(1).sum(1) + 1)
    weight = None
    if coords is not None:
        weight = 1 + click_weight * click_maps(coords, labels, logits.shape[-1]).to(logits.device).amax(1, keepdim=True)
    return dice_loss.mean() + F.binary_cross_entropy_with_logits(logits, targets, weight=weight)


def validation_crops(
    manifest: Path, cases: tuple[str, ...], structures: tuple[str, ...], size: int = 64, spacing: float = 3.0
) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    """(name, image (1, S, S, S) raw intensities, target) crops of real held-out structures of the
    development manifest's ``cases``, each ROI centred on the structure's interior-most voxel (where
    the first `center` click goes)."""
    data = json.loads(Path(manifest).read_text())
    crops = []
    for case in data["cases"]:
        if case["name"] not in cases:
            continue
        image = read_volume(Path(manifest).parent / case["image"])
        label = align_label(image, read_volume(Path(manifest).parent / case["label"]))
        names = {int(value): name for value, name in case["labels"].items() if name in structures}
        crops += structure_crops(case["name"], image, label, names, size, spacing)
    return crops


def structure_crops(
    case: str, image: Volume, label: Volume, names: dict[int, str], size: int, spacing: float
) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    """(``case:name``, image crop, target crop) per structure of ``names`` (label value -> name), each
    ROI of ``size``³ at ``spacing`` mm centred on the structure's interior-most voxel."""
    crops = []
    for value, name in names.items():
        mask = label.array == value
        if mask.sum() < 50:
            continue
        depth = ndimage.distance_transform_edt(mask, sampling=image.spacing)
        centre = np.array(np.unravel_index(int(np.argmax(depth)), mask.shape), dtype=np.float64)
        roi = RoiGrid.centred(image, centre, size=size, spacing=spacing)
        crop = roi.extract(image.array, outside="edge")[None]  # as the engine crops for ClickUNet3D
        target = (roi.extract(mask.astype(np.float32)) > 0.5).float()[None]
        crops.append((f"{case}:{name}", crop, target))
    return crops


def _progress(settings: ClickTrainSettings, step: int, elapsed: float) -> float:
    """Fraction of the budget used: of the steps, or of the minutes if a time budget is set and binds first."""
    used = step / settings.steps
    return used if settings.minutes is None else max(used, elapsed / (settings.minutes * 60))


def _learning_rate(settings: ClickTrainSettings, step: int, progress: float) -> float:
    """Linear warm-up, then a cosine decay to zero over the budget."""
    if step < settings.warmup_steps:
        return settings.lr * (step + 1) / settings.warmup_steps
    return settings.lr * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def crop_loader(source, settings: ClickTrainSettings, start_step: int) -> torch.utils.data.DataLoader:
    """Batches of ``source`` from ``start_step`` on, synthesised by ``settings.workers`` processes.

    Batch ``j`` holds the samples ``j * batch_size + b`` of the seeded stream whatever the number
    of workers (:class:`~fastsam3d.data.streams.IndexedStream`), so a resumed run sees the crops
    an uninterrupted one would have."""
    stream = IndexedStream(source, settings.batch_size, settings.seed, start_batch=start_step)
    return torch.utils.data.DataLoader(
        stream,
        batch_size=None,
        num_workers=settings.workers,
        worker_init_fn=_single_thread if settings.workers else None,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=settings.workers > 0,
    )


def _single_thread(_: int) -> None:
    """In a loader worker: one thread each (the workers share the cores with the training)."""
    torch.set_num_threads(1)


def train_click_model(
    out: Path,
    source,
    settings: ClickTrainSettings,
    validation: list | None = None,
    device: str | None = None,
    progress: bool = True,
    config: str = "click-unet",
) -> ClickUNet3D:
    """Train (or resume from ``out/checkpoint.pt``); writes ``metrics.csv``, ``validation.csv`` and
    ``model.safetensors``. ``source.draw(rng)`` gives (image, target) crops."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device(device or default_device())
    model = load_model(settings.init) if settings.init else build_model(config)
    model = model.to(device).train()
    optimiser = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    start, elapsed = 0, 0.0
    checkpoint_path = out / "checkpoint.pt"
    if checkpoint_path.is_file():
        saved = torch.load(checkpoint_path, map_location=device, weights_only=True)
        if saved["settings"] != asdict(settings):
            raise ValueError(f"{checkpoint_path} belongs to a run with other settings: use another output folder")
        model.load_state_dict(saved["model"])
        optimiser.load_state_dict(saved["optimiser"])
        start, elapsed = saved["step"], saved["elapsed"]
    metrics = CsvLog(out / "metrics.csv", ["step", "loss", "dice_last_click", "lr", "seconds"], True)
    validation_log = CsvLog(out / "validation.csv", ["step", "crops", *[f"dice_click{i + 1}" for i in range(5)]], True)
    bar = tqdm(range(start, settings.steps), initial=start, total=settings.steps, disable=not progress, desc="train")
    batches = iter(crop_loader(source, settings, start))
    began = time.perf_counter() - elapsed
    for step in bar:
        elapsed = time.perf_counter() - began
        if _progress(settings, step, elapsed) >= 1:
            break
        lr = _learning_rate(settings, step, _progress(settings, step, elapsed))
        for group in optimiser.param_groups:
            group["lr"] = lr
        images, targets = (t.to(device, non_blocking=True) for t in next(batches))
        loss, score = interactive_loss(model, images, targets, settings, sample_rng(settings.seed + 1, step))
        optimiser.zero_grad(set_to_none=True)
        if torch.isfinite(loss):
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimiser.step()
        elapsed = time.perf_counter() - began
        metrics.write([step + 1, f"{loss.item():.5f}", f"{score:.4f}", f"{lr:.6g}", f"{elapsed:.1f}"])
        bar.set_postfix(loss=f"{loss.item():.3f}", dice=f"{score:.2f}")
        done = step + 1
        last = done == settings.steps or _progress(settings, done, elapsed) >= 1
        if done % settings.checkpoint_every == 0 or last:
            with atomic_output(checkpoint_path) as temp:
                torch.save(
                    {
                        "model": model.state_dict(),
                        "optimiser": optimiser.state_dict(),
                        "step": done,
                        "elapsed": elapsed,
                        "settings": asdict(settings),
                    },
                    temp,
                )
        if validation and (done % settings.validate_every == 0 or last):
            model.eval()
            per_click = validate(model, [(image, target) for _, image, target in validation])
            model.train()
            validation_log.write([done, len(validation), *[f"{d:.4f}" for d in per_click]])
            tqdm.write(f"step {done}: held-out Dice per click {' '.join(f'{d:.3f}' for d in per_click)}")
            began = time.perf_counter() - elapsed  # validation time does not count
    metrics.close()
    validation_log.close()
    model.eval()
    save_model(model, out / "model.safetensors")
    return model
