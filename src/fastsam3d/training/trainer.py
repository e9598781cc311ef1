"""``fastsam3d train``: interactive training from scratch, fine-tuning or parameter-efficient, resumable.

One loop for one CPU, one GPU (bf16 autocast) or ``torchrun --nproc_per_node N`` (DDP, gloo on
CPU / NCCL on GPU, every rank its own share of the sample stream, rank 0 logs and saves). Every
``checkpoint_every`` steps ``checkpoint.pt`` is written atomically; ``resume=True`` continues from
it with exactly the samples, clicks and learning rate an uninterrupted run would have used. Every
``epoch_steps`` steps (an "epoch" of the endless stream) the Dice per click on fixed validation
crops goes to ``validation.csv``; each step's loss, Dice and learning rate to ``metrics.csv``.
"""

from __future__ import annotations

import csv
import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from ..data.streams import IndexedStream, MixedSource, Source, SyntheticSource, fixed_samples
from ..errors import FastSAM3DError
from ..io import atomic_output
from ..modeling import Sam3D
from ..modeling.peft import apply_peft, merge_peft, peft_state_dict
from ..registry import build_model, load_model, save_model
from . import distributed
from .interactive import InteractiveLoss, validate

VALIDATION_SEED = 10_000


@dataclass
class TrainSettings:
    """Everything a training run depends on (saved in the checkpoint)."""

    config: str = "compact"
    init: str | None = None
    data: str | None = None
    real_fraction: float = 0.5
    holdout: tuple[str, ...] = ()
    minutes: float | None = 45.0
    max_steps: int | None = None
    batch_size: int = 2
    rounds: int = 3
    lr: float = 4e-4
    weight_decay: float = 0.01
    warmup_steps: int = 100
    seed: int = 0
    epoch_steps: int = 250
    checkpoint_every: int = 100
    workers: int = 1
    validation_samples: int = 8
    peft: str = "none"
    cluster_after: int | None = None
    loss_size: int = 64
    max_positive_weight: float = 1.0
    device: str | None = None
    amp: bool = True
    progress: bool = True


def build_sources(settings: TrainSettings, size: int) -> tuple[Source, dict[str, Source]]:
    """The training source (synthetic, or synthetic mixed with labelled data) and validation sources."""
    synthetic = SyntheticSource(size)
    if not settings.data:
        return synthetic, {"synthetic": synthetic}
    from ..data.labelled import LabelledCrops

    real = LabelledCrops(settings.data, size=size, exclude=settings.holdout)
    sources: dict[str, Source] = {"synthetic": synthetic}
    if settings.holdout:
        sources["holdout"] = LabelledCrops(settings.data, size=size, include=settings.holdout, augment=False)
    mixed = MixedSource([synthetic, real], [1 - settings.real_fraction, settings.real_fraction])
    return mixed, sources


def learning_rate(settings: TrainSettings, step: int, elapsed: float) -> float:
    """Linear warm-up, then cosine decay over the step budget (or the time budget) to 2 %."""
    if settings.max_steps:
        progress = step / settings.max_steps
    else:
        progress = elapsed / (settings.minutes * 60)
    warmup = min(1.0, (step + 1) / max(settings.warmup_steps, 1))
    return settings.lr * max(warmup * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))), 0.02)


def atomic_save(state: dict, path: Path) -> None:
    with atomic_output(path) as temp:
        torch.save(state, temp)


def _build_model(settings: TrainSettings) -> Sam3D:
    model = load_model(settings.init) if settings.init else build_model(settings.config)
    if not isinstance(model, Sam3D):
        raise FastSAM3DError(
            f"`fastsam3d train` fine-tunes 3D SAMs; {settings.init or settings.config!r} is a click-conditioned "
            "U-Net: continue it with `fastsam3d train-default --init default`"
        )
    model.train()
    if settings.cluster_after is not None:  # kept in the exported config: inference clusters too
        model.image_encoder.enable_token_clustering(settings.cluster_after)
        model.config = replace(model.config, cluster_after=settings.cluster_after)
    apply_peft(model, settings.peft)
    return model


def train(out: Path, settings: TrainSettings | None = None, resume: bool = False) -> Path | None:
    """Train until the step or time budget (summed over resumed runs); export fp16 safetensors.

    Returns the exported model (rank 0; ``None`` on other ranks). With ``peft`` the trainable part
    also goes to ``adapters.safetensors``; low-rank adapters are merged into ``model.safetensors``,
    bottleneck adapters live only in the adapter file (then that file is returned).
    """
    settings = settings or TrainSettings()
    if settings.max_steps is None and not settings.minutes:
        raise FastSAM3DError("give a step budget (--steps) or a time budget (--minutes)")
    out = Path(out)
    group = distributed.setup(settings.device)
    try:
        return _train(out, settings, resume, group)
    finally:
        group.close()


def _train(out: Path, settings: TrainSettings, resume: bool, group: distributed.Distributed) -> Path | None:
    if group.is_main:
        out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(settings.seed)
    model = _build_model(settings).to(group.device)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=settings.lr, weight_decay=settings.weight_decay)
    step, elapsed = 0, 0.0
    checkpoint_path = out / "checkpoint.pt"
    if resume and checkpoint_path.is_file():
        state = torch.load(checkpoint_path, weights_only=True, map_location=group.device)
        _check_same_run(state.get("settings", {}), settings, checkpoint_path)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        step, elapsed = state["step"], state["elapsed"]
        if group.is_main:
            _drop_rows_after(out / "metrics.csv", step)  # logged after the checkpoint by the interrupted run
            print(f"resumed at step {step} ({elapsed / 60:.1f} min)", flush=True)
    autocast = torch.bfloat16 if settings.amp and group.device.type == "cuda" else None
    objective: torch.nn.Module = InteractiveLoss(
        model,
        settings.rounds,
        loss_size=settings.loss_size,
        autocast=autocast,
        max_positive_weight=settings.max_positive_weight,
    )
    if group.enabled:
        device_ids = [group.device.index] if group.device.type == "cuda" else None
        objective = DistributedDataParallel(objective, device_ids=device_ids, find_unused_parameters=True)
    source, validation_sources = build_sources(settings, model.img_size)
    validation = {}
    if group.is_main:
        validation = {
            name: fixed_samples(s, settings.validation_samples, VALIDATION_SEED)
            for name, s in validation_sources.items()
        }
    stream = IndexedStream(
        source, settings.batch_size, settings.seed, start_batch=step, rank=group.rank, world=group.world
    )
    loader = torch.utils.data.DataLoader(
        stream, batch_size=None, num_workers=settings.workers, persistent_workers=False
    )
    metrics = CsvLog(
        out / "metrics.csv", ["step", "loss", "dice_first_round", "dice_last_round", "lr", "elapsed_s"], group.is_main
    )
    bar = tqdm(
        total=settings.max_steps,
        initial=step,
        unit="step",
        disable=not (settings.progress and group.is_main),
        dynamic_ncols=True,
    )
    started = time.perf_counter() - elapsed

    def checkpoint() -> None:
        if group.is_main:
            atomic_save(
                {
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "step": step,
                    "elapsed": time.perf_counter() - started,
                    "settings": _plain(settings),
                },
                checkpoint_path,
            )

    for images, targets in loader:
        elapsed = time.perf_counter() - started
        over_time = settings.minutes is not None and elapsed >= settings.minutes * 60
        if group.mean(float(over_time)) > 0 or (settings.max_steps is not None and step >= settings.max_steps):
            break
        for parameter_group in optimizer.param_groups:
            parameter_group["lr"] = learning_rate(settings, step, elapsed)
        rng = np.random.default_rng([settings.seed, group.rank, step, 1])
        loss, scores = objective(images.to(group.device), targets.to(group.device), rng)
        optimizer.zero_grad(set_to_none=True)
        loss_value = group.mean(loss.item())  # non-finite when any rank's batch is bad: every rank skips it
        if math.isfinite(loss_value):
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trainable, 1.0)
            optimizer.step()
        else:
            tqdm.write(f"step {step + 1}: non-finite loss, batch skipped")
        step += 1
        metrics.write(
            [
                step,
                f"{loss_value:.4f}",
                f"{scores[0]:.4f}",
                f"{scores[-1]:.4f}",
                f"{optimizer.param_groups[0]['lr']:.2e}",
                f"{elapsed:.0f}",
            ]
        )
        bar.update(1)
        bar.set_postfix(loss=f"{loss_value:.3f}", dice=f"{scores[-1]:.2f}", minutes=f"{elapsed / 60:.1f}")
        if step % settings.checkpoint_every == 0:
            checkpoint()
        if step % settings.epoch_steps == 0:
            _validate(model, validation, step, out, group)
    bar.close()
    metrics.close()
    checkpoint()
    if step % settings.epoch_steps:
        _validate(model, validation, step, out, group, final=True)
    if group.enabled:
        _check_ranks_agree(model, group)
    if not group.is_main:
        return None
    return _export(model, settings, out)


def _validate(
    model: Sam3D, validation: dict, step: int, out: Path, group: distributed.Distributed, final: bool = False
) -> None:
    """Dice per click on each validation set (rank 0), appended to ``validation.csv``."""
    if group.is_main and any(validation.values()):
        log = CsvLog(out / "validation.csv", ["step", "set"] + [f"dice_click{c + 1}" for c in range(5)], enabled=True)
        for name, samples in validation.items():
            if samples:
                scores = validate(model, samples)
                log.write([step, name] + [f"{s:.4f}" for s in scores])
                label = "final " if final else ""
                tqdm.write(
                    f"{label}step {step} validation ({name}) Dice per click " + " ".join(f"{s:.3f}" for s in scores)
                )
        log.close()
    group.barrier()


def _check_ranks_agree(model: Sam3D, group: distributed.Distributed) -> None:
    """DDP keeps replicas identical; verify it once at the end (a broken setup would diverge silently)."""
    checksum = float(sum(p.detach().double().sum() for p in model.parameters()))
    spread = group.mean(abs(checksum - group.mean(checksum)))
    if spread > 1e-6 * max(1.0, abs(checksum)):
        raise RuntimeError(f"model replicas differ across ranks (checksum spread {spread:.3g})")
    if group.is_main:
        print(f"weights identical on all {group.world} ranks (checksum {checksum:.6f})", flush=True)


def _export(model: Sam3D, settings: TrainSettings, out: Path) -> Path:
    model = model.cpu()
    if settings.peft != "none":
        save_file(peft_state_dict(model), str(out / "adapters.safetensors"), metadata={"peft": settings.peft})
        if "adapter" in settings.peft.split("+"):
            return out / "adapters.safetensors"
        merge_peft(model)
    return save_model(model.eval(), out / "model.safetensors", half=True)


def _check_same_run(saved: dict, settings: TrainSettings, path: Path) -> None:
    """A checkpoint resumes only the run that wrote it (same model, adapters, seed and batch)."""
    keys = ("config", "init", "peft", "cluster_after", "seed", "batch_size", "data")
    different = [k for k in keys if k in saved and saved[k] != getattr(settings, k)]
    if different:
        raise FastSAM3DError(
            f"{path} was written by another run ("
            + ", ".join(f"{k}: {saved[k]!r} there, {getattr(settings, k)!r} now" for k in different)
            + "): use a new --out or the same options"
        )


def _drop_rows_after(path: Path, step: int) -> None:
    if path.is_file():
        lines = path.read_text().splitlines(keepends=True)
        kept = lines[:1] + [line for line in lines[1:] if int(line.split(",", 1)[0]) <= step]
        with atomic_output(path) as temp:
            temp.write_text("".join(kept))


def _plain(settings: TrainSettings) -> dict:
    """Settings as plain values (checkpoints load with ``weights_only=True``)."""
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(settings).items()}


class CsvLog:
    """Append rows to a line-buffered CSV (header once), on rank 0 only."""

    def __init__(self, path: Path, header: list[str], enabled: bool) -> None:
        self.handle = None
        if enabled:
            new = not path.exists()
            self.handle = open(path, "a", newline="", buffering=1)  # noqa: SIM115 (kept open for the run)
            self.writer = csv.writer(self.handle)
            if new:
                self.writer.writerow(header)

    def write(self, row: list) -> None:
        if self.handle:
            self.writer.writerow(row)

    def close(self) -> None:
        if self.handle:
            self.handle.close()
