"""``fastsam3d train-default``: the one command that reproduces the shipped default model.

Stages (each resumable: run the same command again after an interruption):

1. **teacher** — ``compact-teacher`` (8 blocks) trained interactively from scratch on synthetic
   domain-randomised crops;
2. **labels** — its distillation features for ``label_crops`` crops (synthetic + development CT);
3. **distill** — layer-wise progressive distillation into the 4-block ``compact`` encoder;
4. **student** — the distilled encoder with the teacher's prompt encoder and decoder, fine-tuned
   end to end on synthetic + development CT (the MR and DICOM-CT cases are held out for validation);
5. **polish** — a second cosine cycle at half the learning rate (a warm restart);

then the export: fp16 safetensors named ``default`` (what ``fastsam3d.weights`` ships).

Budgets are in steps, so the same command gives the same weights on the same software (about
an hour on a 2-core CPU); ``scale`` multiplies them for a longer run (e.g. on a GPU).
"""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

from ..data.devdata import dev_manifest
from ..errors import FastSAM3DError
from ..io import atomic_output
from ..registry import WEIGHTS_DIR, load_model, save_model
from .distill import distill, prepare_labels
from .trainer import TrainSettings, train

HOLDOUT = ("mr", "ct_dicom")


TEACHER_STEPS, LABEL_CROPS, DISTILL_EPOCHS, STUDENT_STEPS, POLISH_STEPS = 1000, 120, 10, 1400, 1000


def train_default(out: Path, scale: float = 1.0, device: str | None = None, seed: int = 0, progress: bool = True) -> Path:
    """Run (or resume) all stages; returns the exported ``default.safetensors``."""
    out = Path(out)
    manifest = dev_manifest()
    data = str(manifest) if manifest else None
    holdout = HOLDOUT if data else ()
    if data is None:
        print("development data not found (run `fastsam3d data fetch`): training on synthetic crops only")
    common = {"device": device, "seed": seed, "progress": progress, "workers": 1, "rounds": 3, "minutes": None}
    label_crops = round(LABEL_CROPS * scale)
    teacher = out / "teacher" / "model.safetensors"
    if not teacher.is_file():
        print(f"[1/5] teacher: {round(TEACHER_STEPS * scale)} steps", flush=True)
        # The shipped teacher was trained with a class-balanced BCE (foreground weight up to 50),
        # which over-segments; the student stage uses plain BCE and corrects it.
        train(out / "teacher", TrainSettings(config="compact-teacher", max_steps=round(TEACHER_STEPS * scale),
                                             max_positive_weight=50.0, **common), resume=True)
    labels = out / "labels"
    if not (labels / "labels.json").is_file():
        print(f"[2/5] teacher features for {label_crops} crops", flush=True)
        prepare_labels(str(teacher), labels, label_crops,
                       TrainSettings(data=data, holdout=holdout, device=device, seed=seed + 1), progress)
    student = out / "distill" / "student.safetensors"
    if not student.is_file():
        print("[3/5] layer-wise progressive distillation", flush=True)
        distill(labels, out / "distill", "compact", epochs=DISTILL_EPOCHS, layer_epochs=3, accumulation=4, seed=seed,
                resume=True, device=device, progress=progress)
    tuned = out / "student" / "model.safetensors"
    if not tuned.is_file():
        print(f"[4/5] student fine-tuning: {round(STUDENT_STEPS * scale)} steps", flush=True)
        train(out / "student", TrainSettings(init=str(student), data=data, holdout=holdout,
                                             max_steps=round(STUDENT_STEPS * scale), lr=2e-4, warmup_steps=20, **common), resume=True)
    polished = out / "polish" / "model.safetensors"
    if not polished.is_file():
        print(f"[5/5] second fine-tuning cycle: {round(POLISH_STEPS * scale)} steps", flush=True)
        train(out / "polish", TrainSettings(init=str(tuned), data=data, holdout=holdout,
                                            max_steps=round(POLISH_STEPS * scale), lr=1e-4, warmup_steps=20, **common), resume=True)
    print("export", flush=True)
    model = load_model(str(polished))
    model.config = replace(model.config, name="default", description="the model shipped with fastsam3d",
                           weights="default.safetensors")
    return save_model(model, out / "default.safetensors", half=True)


def install_default(path: Path) -> Path:
    """Copy exported weights into the package as the ``default`` model (atomically)."""
    model = load_model(str(path))
    if model.config.name != "default":
        raise FastSAM3DError(f"{path} is not an exported default model (config {model.config.name!r})")
    target = WEIGHTS_DIR / "default.safetensors"
    with atomic_output(target) as temp:
        shutil.copyfile(path, temp)
    return target
