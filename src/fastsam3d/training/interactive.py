"""SAM-Med3D-style interactive training of a 3D SAM on synthetic crops, time-budgeted and resumable.

    python -m fastsam3d.training.interactive --out runs/default --minutes 45 [--resume]

Per batch the encoder runs once; then ``rounds`` click rounds: round 1 is one include click
inside the target (or, for models with box embeddings, sometimes a jittered box), every later
round adds a click in the current error (interior of the larger of false negatives / false
positives, sampled on the low-res grid), all clicks so far go in as points and the previous
low-res logits as the mask prompt. Loss: Dice + BCE on the upsampled logits, averaged over rounds.
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from ..data.shapes import SyntheticShapes
from ..evaluation.clicks import center_click, deepest_error, dice
from ..modeling import Sam3D
from ..modeling.peft import apply_peft, merge_peft, peft_state_dict
from ..preprocess import normalise_intensity
from ..registry import build_model, load_model, save_model


class SyntheticStream(torch.utils.data.IterableDataset):
    """Endless normalised (image (1,S,S,S), target (1,S,S,S)) pairs; each worker has its own seed."""

    def __init__(self, size: int, seed: int) -> None:
        self.size, self.seed = size, seed

    def __iter__(self):
        worker = torch.utils.data.get_worker_info()
        generator = SyntheticShapes(self.size, seed=self.seed * 1000 + (worker.id if worker else 0))
        while True:
            image, target = generator.sample_object()
            yield normalise_intensity(torch.from_numpy(image))[None], torch.from_numpy(target)[None].float()


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


def dice_bce_loss(logits: torch.Tensor, target: torch.Tensor, max_positive_weight: float = 50.0) -> torch.Tensor:
    """Soft Dice + class-balanced BCE (foreground up-weighted to the background's share, at most
    ``max_positive_weight``): small targets otherwise teach the model to predict nothing."""
    probability = torch.sigmoid(logits)
    intersection = (probability * target).flatten(1).sum(1)
    denominator = probability.flatten(1).sum(1) + target.flatten(1).sum(1)
    dice_loss = 1 - (2 * intersection + 1) / (denominator + 1)
    foreground = target.mean().clamp_min(1e-6)
    positive_weight = ((1 - foreground) / foreground).clamp(1.0, max_positive_weight)
    return dice_loss.mean() + F.binary_cross_entropy_with_logits(logits, target, pos_weight=positive_weight)


def interactive_loss(
    model: Sam3D, images: torch.Tensor, targets: torch.Tensor, rounds: int, rng: np.random.Generator, box_rate: float = 0.2
) -> tuple[torch.Tensor, list[float]]:
    """Mean loss over click rounds, and the batch Dice after each round."""
    batch = images.shape[0]
    low_res = model.low_res_size
    factor = model.img_size // low_res[0]
    targets_low = F.adaptive_max_pool3d(targets, low_res)[:, 0].numpy() > 0.5  # thin targets stay visible
    embedding = model.encode(images)
    previous = torch.zeros(batch, 1, *low_res)
    points: list[list[np.ndarray]] = [[] for _ in range(batch)]
    labels: list[list[int]] = [[] for _ in range(batch)]
    use_box = model.prompt_encoder.supports_boxes and rng.random() < box_rate
    boxes = None
    if use_box:
        corners = []
        for target in targets[:, 0].numpy() > 0.5:
            where = np.argwhere(target)
            corners.append(np.concatenate([where.min(0), where.max(0)]) + rng.normal(0, 2, 6))
        boxes = torch.tensor(np.array(corners), dtype=torch.float32)
    losses, scores = [], []
    for round_index in range(rounds):
        for b in range(batch):
            if round_index == 0 and use_box:
                continue
            prediction = previous[b, 0].numpy() > 0
            index, label = sample_error_click(prediction, targets_low[b], rng)
            points[b].append(index * factor + (factor - 1) / 2 + rng.uniform(-1, 1, 3))
            labels[b].append(label)
        count = max(len(p) for p in points)
        coords = torch.zeros(batch, count, 3)
        point_labels = torch.full((batch, count), -1, dtype=torch.int64)
        for b in range(batch):
            if points[b]:
                coords[b, : len(points[b])] = torch.tensor(np.array(points[b]), dtype=torch.float32)
                point_labels[b, : len(labels[b])] = torch.tensor(labels[b])
        logits, _ = model.decode(embedding, coords if count else None, point_labels if count else None, boxes, previous)
        upsampled = model.upsample(logits)
        losses.append(dice_bce_loss(upsampled, targets))
        previous = logits.detach()
        with torch.no_grad():
            scores.append(float(np.mean([dice(u > 0, t > 0.5) for u, t in zip(upsampled[:, 0].numpy(), targets[:, 0].numpy())])))
    return torch.stack(losses).mean(), scores


@torch.no_grad()
def validate(model: Sam3D, samples: list[tuple[torch.Tensor, torch.Tensor]], clicks: int = 5) -> list[float]:
    """Mean Dice per click with deterministic centre clicks (interior-most voxel of the largest error)."""
    model.eval()
    per_click = np.zeros(clicks)
    for image, target in samples:
        truth = target[0].numpy() > 0.5
        embedding = model.encode(image[None])
        previous = torch.zeros(1, 1, *model.low_res_size)
        points, labels = [], []
        prediction = np.zeros_like(truth)
        for index in range(clicks):
            click = center_click(prediction, truth)
            if click is not None:
                points.append(click[0].astype(np.float32))
                labels.append(int(click[1]))
                coords = torch.tensor(np.array(points))[None]
                previous, _ = model.decode(embedding, coords, torch.tensor([labels]), None, previous)
                prediction = model.upsample(previous)[0, 0].numpy() > 0
            per_click[index] += dice(prediction, truth)
    model.train()
    return list(per_click / len(samples))


def _atomic_save(state: dict, path: Path) -> None:
    temp = path.with_name(f".tmp-{path.name}")
    torch.save(state, temp)
    os.replace(temp, path)


def train(
    out: Path,
    config: str = "compact",
    minutes: float = 45.0,
    max_steps: int | None = None,
    batch_size: int = 2,
    rounds: int = 4,
    lr: float = 4e-4,
    seed: int = 0,
    resume: bool = False,
    validate_every: int = 250,
    checkpoint_every: int = 100,
    workers: int = 1,
    validation_samples: int = 8,
    init: str | None = None,
    peft: str = "none",
    cluster_after: int | None = None,
) -> Path:
    """Train until ``minutes`` of wall time (summed over resumed runs) or ``max_steps``; export fp16 safetensors.

    ``init`` starts from a model name or checkpoint (fine-tuning) instead of ``config``'s random
    weights; ``peft`` (:data:`~fastsam3d.modeling.peft.PEFT_METHODS`, ``+`` combinations) freezes the
    encoder and trains adapters, prompt encoder and decoder, and also writes ``adapters.safetensors``
    (the trainable part alone); ``cluster_after`` trains with token clustering after that block.
    Low-rank adapters are merged into ``model.safetensors``; bottleneck adapters only live in the
    adapter file."""
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = (load_model(init) if init else build_model(config)).train()
    if cluster_after is not None:
        model.image_encoder.enable_token_clustering(cluster_after)
    apply_peft(model, peft)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=lr, weight_decay=0.01)
    step, elapsed = 0, 0.0
    checkpoint_path = out / "checkpoint.pt"
    if resume and checkpoint_path.is_file():
        state = torch.load(checkpoint_path, weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        step, elapsed = state["step"], state["elapsed"]
        print(f"resumed at step {step} ({elapsed / 60:.1f} min)")
    rng = np.random.default_rng(seed + step)
    validation = [next(iter(SyntheticStream(model.img_size, seed=10_000 + i))) for i in range(validation_samples)]
    loader = torch.utils.data.DataLoader(
        SyntheticStream(model.img_size, seed + step), batch_size=batch_size, num_workers=workers,
        persistent_workers=workers > 0,
    )
    budget = minutes * 60
    started = time.perf_counter() - elapsed
    log = open(out / "metrics.csv", "a", newline="")
    writer = csv.writer(log)
    for images, targets in loader:
        elapsed = time.perf_counter() - started
        if elapsed >= budget or (max_steps is not None and step >= max_steps):
            break
        progress = elapsed / budget
        scale = min(1.0, (step + 1) / 100) * 0.5 * (1 + math.cos(math.pi * progress))
        for group in optimizer.param_groups:
            group["lr"] = lr * max(scale, 0.02)
        loss, scores = interactive_loss(model, images, targets, rounds, rng)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        step += 1
        writer.writerow([step, f"{loss.item():.4f}", f"{scores[0]:.4f}", f"{scores[-1]:.4f}", f"{optimizer.param_groups[0]['lr']:.2e}", f"{elapsed:.0f}"])
        if step % 25 == 0:
            log.flush()
            print(f"step {step} loss {loss.item():.3f} dice round1 {scores[0]:.3f} last {scores[-1]:.3f} {elapsed / 60:.1f} min", flush=True)
        if step % checkpoint_every == 0:
            _atomic_save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step, "elapsed": time.perf_counter() - started}, checkpoint_path)
        if step % validate_every == 0:
            scores_per_click = validate(model, validation)
            with open(out / "validation.csv", "a") as handle:
                handle.write(f"{step}," + ",".join(f"{s:.4f}" for s in scores_per_click) + "\n")
            print("validation dice per click " + " ".join(f"{s:.3f}" for s in scores_per_click), flush=True)
    log.close()
    _atomic_save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step, "elapsed": time.perf_counter() - started}, checkpoint_path)
    scores_per_click = validate(model, validation)
    with open(out / "validation.csv", "a") as handle:
        handle.write(f"{step}," + ",".join(f"{s:.4f}" for s in scores_per_click) + "\n")
    print(f"final step {step}: validation dice per click " + " ".join(f"{s:.3f}" for s in scores_per_click))
    if peft != "none":
        save_file(peft_state_dict(model), str(out / "adapters.safetensors"), metadata={"peft": peft})
        if "adapter" in peft.split("+"):
            return out / "adapters.safetensors"
        merge_peft(model)
    if cluster_after is not None:
        model.image_encoder.enable_token_clustering(None)
    return save_model(model.eval(), out / "model.safetensors", half=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--config", default="compact")
    parser.add_argument("--minutes", type=float, default=45.0)
    parser.add_argument("--steps", type=int)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--lr", type=float, default=4e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--init", help="start from this model name or checkpoint (fine-tuning)")
    parser.add_argument("--peft", default="none", help="none | lora | adapter | hyper, or a '+' combination")
    parser.add_argument("--cluster-after", type=int, help="train with token clustering after this encoder block")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    path = train(args.out, args.config, args.minutes, args.steps, args.batch_size, args.rounds, args.lr, args.seed,
                 args.resume, init=args.init, peft=args.peft, cluster_after=args.cluster_after)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
