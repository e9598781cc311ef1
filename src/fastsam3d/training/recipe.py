"""``fastsam3d train-default``: the one command that reproduces the shipped default model.

The default is a :class:`~fastsam3d.modeling.click_unet.ClickUNet3D` trained interactively on
SynthSeg-style crops (:mod:`fastsam3d.data.synth`) made from the 61-structure label map of the
development torso CT (plus its real intensities, and random shapes). The development MR and the
DICOM CT are never trained on: their labelled structures are the validation set, printed
and written to ``validation.csv`` as Dice per click.

Budgets are in steps, so the same command gives the same weights on the same software; run it
again after an interruption and it resumes from its last checkpoint. ``minutes`` replaces the
step budget by a wall-time one (the schedule follows elapsed time): for a session on a shared
machine, at the cost of bit-for-bit reproducibility. ``scale`` multiplies the
steps (e.g. on a GPU); ``init="default"`` continues from the shipped weights as a new run.
"""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

from ..data.devdata import dev_manifest, training_cases
from ..data.synth import LabelMapAtlas, SynthesisSource
from ..errors import FastSAM3DError
from ..io import atomic_output
from ..registry import MODEL_CONFIGS, WEIGHTS_DIR, load_model, save_model
from .click_training import ClickTrainSettings, train_click_model, validation_crops

HOLDOUT = ("mr", "ct_dicom")
VALIDATION_STRUCTURES = (
    "liver",
    "spleen",
    "kidney_left",
    "kidney_right",
    "aorta",
    "stomach",
    "pancreas",
    "gallbladder",
    "inferior_vena_cava",
    "vertebrae_L1",
    "autochthon_left",
    "iliopsoas_right",
)
STEPS = 3500  # ~65 min on 2 idle Zen 4 cores (~1.1 s per step)
CROP_SIZE = 48  # training crops at 3 mm (the network is fully convolutional; it runs on 64³ ROIs)


def train_default(
    out: Path,
    scale: float = 1.0,
    device: str | None = None,
    seed: int = 0,
    progress: bool = True,
    init: str | None = None,
    minutes: float | None = None,
) -> Path:
    """Train (or resume) and export ``out/default.safetensors``."""
    out = Path(out)
    manifest = dev_manifest()
    if manifest is None:
        raise FastSAM3DError("the development data is missing: run `fastsam3d data fetch` first")
    atlases = [LabelMapAtlas.from_files(image, label) for image, label in training_cases(manifest)]
    source = SynthesisSource(atlases, size=CROP_SIZE)
    validation = validation_crops(manifest, HOLDOUT, VALIDATION_STRUCTURES)
    settings = ClickTrainSettings(steps=round(STEPS * scale), seed=seed, init=init, minutes=minutes)
    print(
        f"training the default model: {settings.steps} steps of {settings.batch_size} synthetic crops; "
        f"validation on {len(validation)} held-out real structures",
        flush=True,
    )
    model = train_click_model(out / "train", source, settings, validation, device, progress)
    model.config = replace(MODEL_CONFIGS["default"])
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
