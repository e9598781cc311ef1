"""``fastsam3d train-default``: the one command that reproduces the shipped default model.

The default is a :class:`~fastsam3d.modeling.click_unet.ClickUNet3D` trained interactively on
SynthSeg-style crops (:mod:`fastsam3d.data.synth`) from a library of label maps: the
61-structure map of the development torso CT (with its real intensities), four brains' parcellations
completed into heads (:mod:`fastsam3d.data.brains`), procedural vessel trees, lesions and thin
sheets laid over them (:mod:`fastsam3d.data.procedural`), and random shapes; at both ROI spacings
of the engine's zoom (1.5 and 3 mm). Never trained on: the development MR and DICOM CT, two of
the six brains, and the labelled MNI152 template: the held-out torso structures (at 3 mm) and the
template's deep grey nuclei (at 1.5 mm) are the validation set, printed and written to
``validation.csv`` as Dice per click.

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

from ..data.brains import DEEP_GREY, brain_atlases, brain_manifest, validation_case
from ..data.devdata import dev_manifest, training_cases
from ..data.synth import LabelMapAtlas, SynthesisSource
from ..errors import FastSAM3DError
from ..io import atomic_output
from ..registry import MODEL_CONFIGS, WEIGHTS_DIR, load_model, save_model
from .click_training import ClickTrainSettings, structure_crops, train_click_model, validation_crops

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
CROP_SIZE = 48  # training crops (the network is fully convolutional; it runs on 64³ ROIs)
SPACINGS = (1.5, 3.0)  # mm: the engine's fine and coarse ROI (fastsam3d.engine.session3d's zoom)
ATLAS_WEIGHTS = {"torso": 0.45, "brains": 0.55}  # share of crops from the torso CT and from the four brains
OVERLAY_FRACTION = 0.25  # crops whose target is a procedural vessel tree, lesion or sheet
STROKE_RATE = 0.3  # first prompts that are a lasso or a scribble (else a click or a box)
CORRECTIVE_STROKE_RATE = 0.1  # corrective prompts that are a stroke


def train_default(
    out: Path,
    scale: float = 1.0,
    device: str | None = None,
    seed: int = 0,
    progress: bool = True,
    init: str | None = None,
    minutes: float | None = None,
    batch_size: int = 2,
    workers: int = 1,
    lr: float = 2e-3,
) -> Path:
    """Train (or resume) and export ``out/default.safetensors``."""
    out = Path(out)
    manifest, brains = dev_manifest(), brain_manifest()
    if manifest is None or brains is None:
        raise FastSAM3DError("the training data is missing: run `fastsam3d data fetch` first")
    source = library_source(manifest, brains)
    validation = validation_crops(manifest, HOLDOUT, VALIDATION_STRUCTURES)
    image, label, names = validation_case(brains)
    deep = {value: name for value, name in names.items() if name.rsplit("_", 1)[0] in DEEP_GREY}
    validation += structure_crops("mni152", image, label, deep, size=64, spacing=SPACINGS[0])
    settings = ClickTrainSettings(
        steps=round(STEPS * scale),
        batch_size=batch_size,
        lr=lr,
        seed=seed,
        init=init,
        minutes=minutes,
        workers=workers,
        stroke_rate=STROKE_RATE,
        corrective_stroke_rate=CORRECTIVE_STROKE_RATE,
    )
    print(
        f"training the default model: {settings.steps} steps of {settings.batch_size} synthetic crops; "
        f"validation on {len(validation)} held-out real structures",
        flush=True,
    )
    model = train_click_model(out / "train", source, settings, validation, device, progress)
    model.config = replace(MODEL_CONFIGS["default"])
    return save_model(model, out / "default.safetensors", half=True)


def library_source(manifest: Path, brains: Path, size: int = CROP_SIZE) -> SynthesisSource:
    """The training crops: the label-map library at the engine's ROI spacings, with procedural overlays."""
    torso = [LabelMapAtlas.from_files(image, label) for image, label in training_cases(manifest)]
    heads = brain_atlases(brains, "training")
    weights = [ATLAS_WEIGHTS["torso"] / len(torso)] * len(torso) + [ATLAS_WEIGHTS["brains"] / len(heads)] * len(heads)
    return SynthesisSource(
        torso + heads, size=size, spacings=SPACINGS, overlay_fraction=OVERLAY_FRACTION, atlas_weights=tuple(weights)
    )


def install_default(path: Path) -> Path:
    """Copy exported weights into the package as the ``default`` model (atomically)."""
    model = load_model(str(path))
    if model.config.name != "default":
        raise FastSAM3DError(f"{path} is not an exported default model (config {model.config.name!r})")
    target = WEIGHTS_DIR / "default.safetensors"
    with atomic_output(target) as temp:
        shutil.copyfile(path, temp)
    return target
