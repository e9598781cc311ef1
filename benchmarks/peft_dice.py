"""Fast 3D SAM accuracy: Dice per click after the same fine-tuning budget, per method.

    python benchmarks/peft_dice.py --init SAM_CHECKPOINT [--steps 150] [--out runs/peft-dice]

Fine-tunes ``--init`` on the development CT (``fastsam3d data fetch``; the MR and DICOM-CT cases
held out) with each method for the same number of steps, then runs the evaluation harness
(``center`` protocol, 5 clicks) on the held-out cases' organs. Resumable: finished runs are kept.
Prints Dice per click, trainable parameters and encoder MACs per method.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from fastsam3d.data.devdata import dev_manifest
from fastsam3d.evaluation.evaluate import evaluate
from fastsam3d.modeling.peft import apply_peft, parameter_counts
from fastsam3d.registry import load_model
from fastsam3d.training.recipe import HOLDOUT
from fastsam3d.training.trainer import TrainSettings, train

METHODS = {  # label: (peft, token clustering after block); None = not fine-tuned
    "no fine-tuning": (None, None),
    "full fine-tune": ("none", None),
    "lora r16": ("lora", None),
    "hyper r16": ("hyper", None),
    "hyper r16 + clustering after block 0": ("hyper", 0),
}
ORGANS = ["liver", "spleen", "kidney_left", "kidney_right", "stomach", "urinary_bladder", "gallbladder", "pancreas"]


def encoder_macs(model) -> float:
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model.image_encoder(torch.zeros(1, 1, *(model.img_size,) * 3))
    return counter.get_total_flops() / 2


def encoder_trainable(model, peft: str | None) -> tuple[int, int]:
    """(trainable parameters of the image encoder under ``peft``, all trainable parameters)."""
    if peft is None:
        return 0, 0
    apply_peft(model, peft)
    encoder = sum(p.numel() for p in model.image_encoder.parameters() if p.requires_grad)
    return encoder, parameter_counts(model)[0]


def dice_per_click(data: Path, model: str, out: Path) -> list[float]:
    """Evaluation harness, ``center`` protocol, 5 clicks (kept: a finished evaluation is read back)."""
    summary_file = out / "summary.json"
    if summary_file.is_file():
        summary = json.loads(summary_file.read_text())["models"]
    else:
        summary, _ = evaluate(data, [model], out, protocol="center", steps=5, classes=ORGANS, progress=False)
    return next(iter(summary.values()))["dice_per_step"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--init", required=True, help="a 3D SAM to fine-tune: official .pth or a `fastsam3d train` output"
    )
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--out", type=Path, default=Path("runs/peft-dice"))
    args = parser.parse_args()
    torch.set_num_threads(2)
    manifest = dev_manifest()
    if manifest is None:
        raise SystemExit("development data missing: run `fastsam3d data fetch`")
    holdout_cases = Path(args.out) / "holdout.json"
    holdout_cases.parent.mkdir(parents=True, exist_ok=True)
    spec = json.loads(manifest.read_text())
    spec["cases"] = [
        dict(c, image=str(manifest.parent / c["image"]), label=str(manifest.parent / c["label"]))
        for c in spec["cases"]
        if c["name"] in HOLDOUT
    ]
    holdout_cases.write_text(json.dumps(spec))
    rows = []
    for label, (peft, cluster_after) in METHODS.items():
        run = args.out / label.replace(" ", "-")
        exported = run / "model.safetensors"
        if peft is None:
            exported = Path(args.init)
        elif not exported.is_file():
            settings = TrainSettings(
                init=args.init,
                data=str(manifest),
                real_fraction=1.0,
                holdout=HOLDOUT,
                minutes=None,
                max_steps=args.steps,
                lr=2e-4,
                warmup_steps=10,
                peft=peft,
                cluster_after=cluster_after,
                epoch_steps=10**9,
                validation_samples=0,
                progress=False,
            )
            train(run, settings)
        dice = dice_per_click(holdout_cases, str(exported), run / "evaluation")
        encoder, trainable = encoder_trainable(load_model(args.init), peft)
        rows.append((label, encoder, trainable, encoder_macs(load_model(str(exported))), dice))
    print(
        f"fine-tuned from {args.init!r}, {args.steps} steps each on the development CT; evaluated on {', '.join(HOLDOUT)}"
    )
    print(
        "| method | trainable in the encoder | trainable with prompt encoder + decoder | encoder GMAC | Dice clicks 1-5 |"
    )
    print("|---|---|---|---|---|")
    for label, encoder, trainable, macs, dice in rows:
        print(
            f"| {label} | {encoder / 1e6:.3f} M | {trainable / 1e6:.2f} M | {macs / 1e9:.2f} | "
            + " / ".join(f"{d:.3f}" for d in dice)
            + " |"
        )


if __name__ == "__main__":
    main()
