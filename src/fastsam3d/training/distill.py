"""FastSAM3D layer-wise progressive distillation: teacher features prepared once, student encoder
trained layer by layer, then assembled with the teacher's prompt encoder and mask decoder.

``prepare_labels`` runs the teacher encoder once per training crop and stores, per crop, the
normalised image and the teacher's distillation features (``ImageEncoderViT3D(...,
return_intermediates=True)``): [patch embedding + pos, output after blocks 2, 4, ..., depth,
neck]. (The official ``preparelabel.py`` calls these "labels"; they are features, not logits.)

``distill`` trains a randomly initialised student encoder against them with MSE. The student's
list has the same layout ([embed, after 2, 4, ..., neck]) and the same width. **Which teacher
layer supervises which student layer** (``layer_pairs``):

* ``official`` (default) — the original progressive FastSAM3D schedule: stage k pairs list entry k
  of both, i.e. student block 2k <- teacher block 2k (for the 6/12-layer pair: 2<-2, 4<-4, 6<-6),
  and a last stage pairs the necks (the loss of the official code's current HEAD). The official
  code would pair the student's neck with teacher block 8 at stage 4 (a shape error); we end with
  neck <- neck instead.
* ``uniform`` — student block 2k <- teacher block 2k * teacher_depth / student_depth (2<-4, 4<-8,
  6<-12), then neck <- neck.

**Schedule**: one pair at a time, starting with the first; the next pair takes over every
``layer_epochs`` epochs (official: 3); after the last stage training continues on the necks.
Loss: mean squared error on the current pair only (all pairs are logged). Optimiser as the
official run: AdamW(lr 8e-4, weight decay 0.1), batch 1 with gradient accumulation.
Not reproduced: the official loop normalises the already-normalised image a second time
(a train/test mismatch); images here are normalised once, as at inference.

After distillation ``assemble_student`` joins the student encoder with the teacher's prompt
encoder and mask decoder; ``fastsam3d train --init`` then fine-tunes it end to end.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from ..checkpoints import config_from_json
from ..data.streams import sample_rng
from ..errors import CheckpointError, FastSAM3DError
from ..io import atomic_output
from ..modeling import ImageEncoderViT3D, Sam3D
from ..modeling.sam3d import Sam3DConfig
from ..registry import build_model, get_config, load_model, save_model
from . import distributed
from .trainer import CsvLog, TrainSettings, atomic_save, build_sources

LAYER_MAPS = ("official", "uniform")


def layer_pairs(student_depth: int, teacher_depth: int, mode: str = "official") -> list[tuple[int, int]]:
    """(student, teacher) indices into the feature lists, one per stage, in stage order.

    Feature list index k >= 1 is the output after block 2k; index -1 is the neck.
    """
    if student_depth % 2 or teacher_depth % 2 or student_depth > teacher_depth:
        raise FastSAM3DError(
            f"distillation needs even depths with student <= teacher, got {student_depth} / {teacher_depth}"
        )
    student_stages, teacher_stages = student_depth // 2, teacher_depth // 2
    if mode == "official":
        pairs = [(k, k) for k in range(1, student_stages + 1)]
    elif mode == "uniform":
        if teacher_stages % student_stages:
            raise FastSAM3DError(
                f"uniform layer map needs teacher depth a multiple of student depth, got {teacher_depth} / {student_depth}"
            )
        ratio = teacher_stages // student_stages
        pairs = [(k, k * ratio) for k in range(1, student_stages + 1)]
    else:
        raise FastSAM3DError(f"layer map must be one of {', '.join(LAYER_MAPS)}, got {mode!r}")
    return pairs + [(-1, -1)]


def _pair_name(pair: tuple[int, int]) -> str:
    student, teacher = pair
    return "neck<-neck" if student == -1 else f"s{2 * student}<-t{2 * teacher}"


@torch.no_grad()
def prepare_labels(
    teacher: str, out: Path, count: int, settings: TrainSettings | None = None, progress: bool = True
) -> Path:
    """Teacher features for ``count`` training crops (drawn as ``fastsam3d train`` draws them).

    Resumable (existing crops are kept); under torchrun rank r makes crops r, r + N, ...
    Writes ``out/crop_NNNNN.safetensors`` (image + features, fp16) and ``out/labels.json``.
    """
    settings = settings or TrainSettings()
    group = distributed.setup(settings.device)
    try:
        model = load_model(teacher).to(group.device).eval()
        out.mkdir(parents=True, exist_ok=True)
        source, _ = build_sources(settings, model.img_size)
        mine = range(group.rank, count, group.world)
        for index in tqdm(mine, desc="teacher features", disable=not (progress and group.is_main), dynamic_ncols=True):
            path = out / f"crop_{index:05d}.safetensors"
            if path.exists():
                continue
            image, _ = source.draw(sample_rng(settings.seed, index))
            _, features = model.image_encoder(image[None].to(group.device), return_intermediates=True)
            tensors = {"image": image.half()} | {
                f"feature{k}": f[0].half().cpu().contiguous() for k, f in enumerate(features)
            }
            with atomic_output(path) as temp:
                save_file(tensors, str(temp))
        group.barrier()
        if group.is_main:
            description = {
                "teacher": teacher,
                "teacher_config": model.config.to_json(),
                "count": count,
                "features": model.config.depth // 2 + 2,
                "seed": settings.seed,
                "data": settings.data,
            }
            (out / "labels.json").write_text(json.dumps(description, indent=1))
        return out
    finally:
        group.close()


class TeacherFeatures(torch.utils.data.Dataset):
    """Prepared crops: (image (1,S,S,S) float32, [feature tensors float32])."""

    def __init__(self, folder: Path) -> None:
        description = folder / "labels.json"
        if not description.is_file():
            raise FastSAM3DError(f"{folder} has no labels.json: run `fastsam3d prepare-labels` first")
        self.description = json.loads(description.read_text())
        self.files = sorted(folder.glob("crop_*.safetensors"))
        if len(self.files) < self.description["count"]:
            raise FastSAM3DError(
                f"{folder} holds {len(self.files)} of {self.description['count']} crops: prepare-labels did not finish"
            )

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
        tensors = load_file(str(self.files[index]))
        count = sum(k.startswith("feature") for k in tensors)
        return tensors["image"].float(), [tensors[f"feature{k}"].float() for k in range(count)]


def _collate(batch):
    images, features = zip(*batch, strict=True)
    return torch.stack(images), [torch.stack(level) for level in zip(*features, strict=True)]


def distill(
    labels: Path,
    out: Path,
    student: str = "compact",
    epochs: int = 12,
    layer_epochs: int = 3,
    layer_map: str = "official",
    lr: float = 8e-4,
    weight_decay: float = 0.1,
    batch_size: int = 1,
    accumulation: int = 10,
    seed: int = 0,
    resume: bool = False,
    device: str | None = None,
    progress: bool = True,
) -> Path | None:
    """Layer-wise progressive distillation of ``student``'s encoder; writes ``student.safetensors``
    (student encoder + teacher prompt encoder and decoder) and ``distill.csv`` (per-pair losses)."""
    data = TeacherFeatures(labels)
    teacher_config = config_from_json(data.description["teacher_config"])
    student_config = get_config(student) if isinstance(student, str) else student
    _check_compatible(student_config, teacher_config)
    pairs = layer_pairs(student_config.depth, teacher_config.depth, layer_map)
    group = distributed.setup(device)
    try:
        torch.manual_seed(seed)
        encoder = build_model(student_config).image_encoder.to(group.device).train()
        optimizer = torch.optim.AdamW(encoder.parameters(), lr=lr, weight_decay=weight_decay)
        first_epoch = 0
        checkpoint_path = out / "distill_checkpoint.pt"
        if resume and checkpoint_path.is_file():
            state = torch.load(checkpoint_path, weights_only=True, map_location=group.device)
            encoder.load_state_dict(state["encoder"])
            optimizer.load_state_dict(state["optimizer"])
            first_epoch = state["epoch"]
        network = DistributedDataParallel(encoder, find_unused_parameters=True) if group.enabled else encoder
        sampler = torch.utils.data.DistributedSampler(data, group.world, group.rank, shuffle=True, seed=seed)
        loader = torch.utils.data.DataLoader(data, batch_size=batch_size, sampler=sampler, collate_fn=_collate)
        if group.is_main:
            out.mkdir(parents=True, exist_ok=True)
        log = CsvLog(
            out / "distill.csv",
            ["epoch", "training"] + [f"mse {_pair_name(p)}" for p in pairs] + ["elapsed_s"],
            group.is_main,
        )
        started = time.perf_counter()
        for epoch in range(first_epoch, epochs):
            stage = min(epoch // layer_epochs, len(pairs) - 1)
            sampler.set_epoch(epoch)
            totals = np.zeros(len(pairs))
            optimizer.zero_grad(set_to_none=True)
            bar = tqdm(
                loader,
                desc=f"epoch {epoch + 1}/{epochs} {_pair_name(pairs[stage])}",
                disable=not (progress and group.is_main),
                dynamic_ncols=True,
                leave=False,
            )
            for micro, (images, targets) in enumerate(bar, start=1):
                _, features = network(images.to(group.device), return_intermediates=True)
                losses = [F.mse_loss(features[s], targets[t].to(group.device)) for s, t in pairs]
                (losses[stage] / accumulation).backward()
                totals += [loss.item() for loss in losses]
                if micro % accumulation == 0 or micro == len(loader):
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                bar.set_postfix(loss=f"{losses[stage].item():.4f}")
            means = [group.mean(t / max(len(loader), 1)) for t in totals]
            if group.is_main:
                log.write(
                    [epoch + 1, _pair_name(pairs[stage])]
                    + [f"{m:.5f}" for m in means]
                    + [f"{time.perf_counter() - started:.0f}"]
                )
                tqdm.write(
                    f"epoch {epoch + 1}: training {_pair_name(pairs[stage])}; "
                    + ", ".join(f"{_pair_name(p)} {m:.4f}" for p, m in zip(pairs, means, strict=True))
                )
                atomic_save(
                    {"encoder": encoder.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch + 1},
                    checkpoint_path,
                )
            group.barrier()
        if not group.is_main:
            return None
        log.close()
        teacher = load_model(data.description["teacher"])
        return save_model(assemble_student(encoder.cpu().eval(), teacher, student_config), out / "student.safetensors")
    finally:
        group.close()


def assemble_student(encoder: ImageEncoderViT3D, teacher: Sam3D, config: Sam3DConfig) -> Sam3D:
    """The student encoder with the teacher's prompt encoder and mask decoder (copied)."""
    model = build_model(config)
    model.image_encoder.load_state_dict(encoder.state_dict())
    model.prompt_encoder.load_state_dict(teacher.prompt_encoder.state_dict())
    model.mask_decoder.load_state_dict(teacher.mask_decoder.state_dict())
    return model


def _check_compatible(student: Sam3DConfig, teacher: Sam3DConfig) -> None:
    """Same token grid, width and prompt/decoder sizes: features and decoder transfer as they are."""
    keys = (
        "img_size",
        "patch_size",
        "embed_dim",
        "prompt_dim",
        "mask_in_chans",
        "box_embeddings",
        "decoder_depth",
        "decoder_heads",
        "decoder_mlp_dim",
        "num_multimask_outputs",
        "iou_head_hidden_dim",
    )
    different = [k for k in keys if getattr(student, k) != getattr(teacher, k)]
    if different:
        raise CheckpointError(
            f"student config {student.name!r} does not match teacher {teacher.name!r} in "
            + ", ".join(f"{k} ({getattr(student, k)} vs {getattr(teacher, k)})" for k in different)
        )
