"""``fastsam3d train | prepare-labels | distill | train-default``: training and distillation."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from ..errors import FastSAM3DError

log = logging.getLogger(__name__)


def add_parser(subparsers) -> None:
    train = subparsers.add_parser(
        "train",
        help="interactive training (from scratch, fine-tuning, or parameter-efficient); torchrun for DDP",
        description="SAM-Med3D-style interactive training: several click rounds per sample, clicks from the "
        "error region, previous logits fed back; synthetic domain-randomised crops, optionally mixed with a "
        "labelled dataset. Checkpoints with exact --resume, metrics.csv, validation Dice per click every epoch. "
        "Under `torchrun --nproc_per_node N` it trains with DDP.",
    )
    train.add_argument(
        "--out", type=Path, required=True, help="run folder (checkpoint, metrics.csv, model.safetensors)"
    )
    train.add_argument("--config", default="compact", help="architecture when training from scratch")
    train.add_argument("--init", help="start from this model name or checkpoint (fine-tuning)")
    train.add_argument(
        "--data", help="labelled dataset mixed with synthetic crops: dataset.json manifest, nnU-Net or FastSAM3D folder"
    )
    train.add_argument("--real-fraction", type=float, default=0.5, help="share of crops drawn from --data")
    train.add_argument("--holdout", default="", help="comma-separated case names of --data kept for validation")
    train.add_argument(
        "--peft", default="none", help="none | lora | adapter | hyper, or a '+' combination (frozen encoder)"
    )
    train.add_argument("--cluster-after", type=int, help="token clustering after this encoder block (0-based)")
    train.add_argument("--minutes", type=float, help="wall-time budget (summed over resumed runs)")
    train.add_argument("--steps", type=int, help="step budget (reproducible; the schedule follows it)")
    train.add_argument("--batch-size", type=int, default=2, help="per process")
    train.add_argument("--rounds", type=int, default=3, help="click rounds per sample")
    train.add_argument("--lr", type=float, default=4e-4)
    train.add_argument("--epoch-steps", type=int, default=250, help="validate every this many steps")
    train.add_argument("--workers", type=int, default=1, help="data loader processes")
    train.add_argument(
        "--loss-size", type=int, default=64, help="loss on logits upsampled to this size (the crop size = SAM-Med3D)"
    )
    train.add_argument("--device", help="cpu, cuda, cuda:1 (default: GPU if present)")
    train.add_argument("--no-amp", action="store_true", help="fp32 on GPU (default: bf16 autocast)")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--resume", action="store_true")
    train.set_defaults(func=run_train)

    labels = subparsers.add_parser(
        "prepare-labels",
        help="distillation step 1: run the teacher once over training crops and store its layer features",
    )
    labels.add_argument("teacher", help="teacher model name or checkpoint")
    labels.add_argument("--out", type=Path, required=True, help="folder for the prepared crops")
    labels.add_argument("--count", type=int, default=200, help="number of crops")
    labels.add_argument("--data", help="labelled dataset mixed with synthetic crops (as for train)")
    labels.add_argument("--real-fraction", type=float, default=0.5)
    labels.add_argument("--holdout", default="", help="case names of --data never used")
    labels.add_argument("--device")
    labels.add_argument("--seed", type=int, default=0)
    labels.set_defaults(func=run_prepare_labels)

    distill = subparsers.add_parser(
        "distill",
        help="distillation step 2: layer-wise progressive distillation of a student encoder (FastSAM3D)",
        description="Trains the student encoder layer by layer against the prepared teacher features, then "
        "writes student.safetensors (student encoder + teacher prompt encoder and decoder); fine-tune it end to "
        "end with `fastsam3d train --init OUT/student.safetensors`.",
    )
    distill.add_argument("--labels", type=Path, required=True, help="folder written by prepare-labels")
    distill.add_argument("--out", type=Path, required=True)
    distill.add_argument("--student", default="compact", help="student architecture (same width as the teacher)")
    distill.add_argument("--epochs", type=int, default=12)
    distill.add_argument("--layer-epochs", type=int, default=3, help="epochs before the next layer pair takes over")
    distill.add_argument("--layer-map", default="official", choices=("official", "uniform"))
    distill.add_argument("--lr", type=float, default=8e-4)
    distill.add_argument("--accumulation", type=int, default=10, help="gradient accumulation (batch 1)")
    distill.add_argument("--device")
    distill.add_argument("--seed", type=int, default=0)
    distill.add_argument("--resume", action="store_true")
    distill.set_defaults(func=run_distill)

    recipe = subparsers.add_parser(
        "train-default",
        help="reproduce the shipped default model: interactive training on synthesis from real label maps "
        "(resumable: run again to continue; ~1.5 h on 2 CPU cores)",
    )
    recipe.add_argument("--out", type=Path, default=Path("runs/default"))
    recipe.add_argument("--scale", type=float, default=1.0, help="multiply the step budget (longer runs on a GPU)")
    recipe.add_argument("--init", help="start from these weights, e.g. `default` to continue the shipped model")
    recipe.add_argument("--seed", type=int, default=0)
    recipe.add_argument(
        "--minutes", type=float, help="a wall-time budget instead of the step budget (not bit-reproducible)"
    )
    recipe.add_argument("--device")
    recipe.add_argument("--batch-size", type=int, default=2, help="crops per step (16 or more on a GPU)")
    recipe.add_argument(
        "--workers", type=int, default=1, help="processes synthesising crops beside the training (0: none)"
    )
    recipe.add_argument("--lr", type=float, default=2e-3, help="peak learning rate (AdamW, cosine decay)")
    recipe.add_argument("--install", action="store_true", help="copy the result into the package as the default model")
    recipe.set_defaults(func=run_train_default)


def run_train(args: argparse.Namespace) -> None:
    _require_training_extra(args)
    from ..modeling.peft import PEFT_METHODS
    from ..training.trainer import TrainSettings, train

    holdout = _holdout(args)
    if any(m not in PEFT_METHODS for m in args.peft.split("+")):
        raise FastSAM3DError(f"--peft must be one of {', '.join(PEFT_METHODS)} or a '+' combination")
    if args.steps is None and args.minutes is None:
        args.minutes = 45.0
    settings = TrainSettings(
        config=args.config,
        init=args.init,
        data=args.data,
        real_fraction=args.real_fraction,
        holdout=holdout,
        minutes=args.minutes,
        max_steps=args.steps,
        batch_size=args.batch_size,
        rounds=args.rounds,
        lr=args.lr,
        seed=args.seed,
        epoch_steps=args.epoch_steps,
        workers=args.workers,
        peft=args.peft,
        cluster_after=args.cluster_after,
        loss_size=args.loss_size,
        device=args.device,
        amp=not args.no_amp,
        progress=not args.quiet,
    )
    path = train(args.out, settings, resume=args.resume)
    if path:
        log.info(f"wrote {path}")


def run_prepare_labels(args: argparse.Namespace) -> None:
    _require_training_extra(args)
    from ..training.distill import prepare_labels
    from ..training.trainer import TrainSettings

    holdout = _holdout(args)
    settings = TrainSettings(
        data=args.data, real_fraction=args.real_fraction, holdout=holdout, device=args.device, seed=args.seed
    )
    log.info(f"wrote {prepare_labels(args.teacher, args.out, args.count, settings)}")


def run_distill(args: argparse.Namespace) -> None:
    _require_training_extra(args)
    from ..training.distill import distill

    path = distill(
        args.labels,
        args.out,
        args.student,
        args.epochs,
        args.layer_epochs,
        args.layer_map,
        args.lr,
        accumulation=args.accumulation,
        seed=args.seed,
        resume=args.resume,
        device=args.device,
    )
    if path:
        log.info(f"wrote {path}; fine-tune it with: fastsam3d train --init {path} --out RUN")


def run_train_default(args: argparse.Namespace) -> None:
    _require_training_extra(args)
    from ..training.recipe import install_default, train_default

    if args.batch_size < 1 or args.workers < 0 or args.lr <= 0:
        raise FastSAM3DError("--batch-size must be >= 1, --workers >= 0 and --lr > 0")
    path = train_default(
        args.out,
        args.scale,
        args.device,
        seed=args.seed,
        init=args.init,
        minutes=args.minutes,
        batch_size=args.batch_size,
        workers=args.workers,
        lr=args.lr,
    )
    log.info(f"wrote {path}")
    if args.install:
        log.info(f"installed as the default model: {install_default(path)}")


def _require_training_extra(args: argparse.Namespace) -> None:
    from ..extras import require_extra

    require_extra("train", "monai", feature=f"fastsam3d {args.command}")


def _holdout(args: argparse.Namespace) -> tuple[str, ...]:
    """The --holdout case names, checked against --data; --real-fraction checked too."""
    holdout = tuple(name.strip() for name in args.holdout.split(",") if name.strip())
    if args.data:
        from ..evaluation.datasets import load_cases

        names = {case.name for case in load_cases(args.data)}
        if unknown := set(holdout) - names:
            raise FastSAM3DError(f"--holdout names unknown cases {sorted(unknown)}; cases: {', '.join(sorted(names))}")
    if not 0 <= args.real_fraction <= 1:
        raise FastSAM3DError("--real-fraction must lie in [0, 1]")
    return holdout
