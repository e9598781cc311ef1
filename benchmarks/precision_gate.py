"""Accuracy gate of the fast precisions: masks of ONNX Runtime / int8 / bf16 against fp32 at the same prompts.

    python benchmarks/precision_gate.py                                  # default model, dev volumes
    python benchmarks/precision_gate.py --precisions onnx-fp32 onnx-int8 --random fastsam3d
    python benchmarks/precision_gate.py --checkpoint trained.safetensors # a trained 3D SAM as well
    python benchmarks/precision_gate.py --random fastsam3d sam-med3d     # random official-size models
    python benchmarks/precision_gate.py --device cuda --precisions fp32 bf16 --random fastsam3d sam-med3d

For each trained model and every structure of the development volumes (``fastsam3d data fetch``):
the fp32 session is driven by simulated centre clicks (the interior-most voxel of its largest
error), and the fast session receives exactly the same clicks. Per click it reports the Dice of the
fast mask against the fp32 mask (the gate: >= 0.98 on every structure) and each one's Dice against
the label. For random-weight models (``--random``; rel-pos tables and position embeddings drawn
from N(0, 0.3²) so they matter) it compares the low-res logits of one click on crops of the dev CT
(gate: correlation >= 0.999) and the masks they give (logit > 0).
"""

from __future__ import annotations

import argparse
import copy
import statistics
from dataclasses import replace

import numpy as np
import torch

from fastsam3d.checkpoints import infer_config, load_state_dict_strict, read_checkpoint
from fastsam3d.clicks import center_click, dice
from fastsam3d.data.devdata import default_root
from fastsam3d.engine.roi import RoiGrid, normalise_intensity
from fastsam3d.engine.session3d import Session
from fastsam3d.evaluation.datasets import load_cases
from fastsam3d.registry import build_model, load_model
from fastsam3d.runtime import apply_model_precision


def gate_trained(
    label: str, reference, candidates: dict, clicks: int, min_voxels: int, device: str = "cpu"
) -> list[dict]:
    """Masks of each candidate model (run on ``device``) against ``reference``'s (fp32 on the CPU)
    at ``reference``'s centre clicks."""
    rows = []
    for case in load_cases(default_root() / "dataset.json"):
        image, truth = case.load()
        sessions = {"reference": Session(reference, device="cpu")}
        sessions |= {name: Session(model, device=device) for name, model in candidates.items()}
        for session in sessions.values():
            session.set_image(image)
        for class_id, name in case.classes.items():
            target = truth.array == class_id
            if target.sum() < min_voxels:
                continue
            for session in sessions.values():
                session.add_object(name)
            prediction = np.zeros_like(target)
            for step in range(clicks):
                click = center_click(prediction, target, image.spacing)
                if click is None:
                    break
                masks = {}
                for key, session in sessions.items():
                    session.add_click(click[0], positive=click[1])
                    masks[key] = session.mask()
                prediction = masks["reference"]
                for key in candidates:
                    rows.append(
                        {
                            "model": label,
                            "candidate": key,
                            "case": case.name,
                            "structure": name,
                            "click": step + 1,
                            "dice_vs_fp32": dice(masks[key], masks["reference"]),
                            "dice_fp32": dice(masks["reference"], target),
                            "dice_fast": dice(masks[key], target),
                        }
                    )
    return rows


def _variant(path: str, **changes):
    """The model of a checkpoint with its config changed (token clustering, dilated attention)."""
    state_dict, config = read_checkpoint(path)
    config = replace(config or infer_config(state_dict), **changes)
    model = build_model(config)
    load_state_dict_strict(model, state_dict, path)
    return model


def _report(label: str, rows: list[dict], clicks: int) -> None:
    for key in dict.fromkeys(r["candidate"] for r in rows):
        chosen = [r for r in rows if r["candidate"] == key]
        worst = min(chosen, key=lambda r: r["dice_vs_fp32"])
        structures = {(r["case"], r["structure"]) for r in chosen}
        print(
            f"{label} {key}: {len(structures)} structures x up to {clicks} clicks; Dice vs fp32 "
            f"min {worst['dice_vs_fp32']:.4f} ({worst['case']}/{worst['structure']} click {worst['click']}), "
            f"median {statistics.median(r['dice_vs_fp32'] for r in chosen):.4f}; mean Dice vs label "
            f"fp32 {np.mean([r['dice_fp32'] for r in chosen]):.4f} / {key} "
            f"{np.mean([r['dice_fast'] for r in chosen]):.4f}; gate >= 0.98: "
            f"{'PASS' if worst['dice_vs_fp32'] >= 0.98 else 'FAIL'}",
            flush=True,
        )


def gate_random(name: str, precisions: list[str], crops: int, seed: int = 0, device: str = "cpu") -> list[dict]:
    torch.manual_seed(seed)
    model = build_model(name).eval()
    with torch.no_grad():
        for key, parameter in model.image_encoder.named_parameters():
            if "rel_pos" in key or "pos_embed" in key:
                parameter.normal_(0, 0.3)
    case = next(c for c in load_cases(default_root() / "dataset.json") if c.name == "ct")
    image, _ = case.load()
    rng = np.random.default_rng(seed)
    fast_models = {p: apply_model_precision(copy.deepcopy(model).to(device), p, device) for p in precisions}
    rows = []
    for index in range(crops):
        centre = rng.uniform(0.3, 0.7, 3) * np.array(image.shape)
        roi = RoiGrid.centred(image, centre, size=model.img_size, spacing=model.roi_spacing)
        crop = normalise_intensity(roi.extract(image.array, outside=model.roi_padding))[None, None]
        point = torch.tensor([[[model.img_size / 2] * 3]], dtype=torch.float32)
        labels = torch.ones(1, 1, dtype=torch.int64)
        with torch.inference_mode():
            reference, _ = model.decode(model.encode(crop), point, labels)
            for precision, fast in fast_models.items():
                logits, _ = fast.decode(fast.encode(crop.to(device)), point.to(device), labels.to(device))
                logits = logits.cpu()
                correlation = torch.corrcoef(torch.stack([reference.flatten(), logits.flatten()]))[0, 1].item()
                rows.append(
                    {
                        "model": name,
                        "precision": precision,
                        "crop": index,
                        "logits_correlation": correlation,
                        "mask_dice_vs_fp32": dice((logits > 0).numpy(), (reference > 0).numpy()),
                    }
                )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="*", default=["default"], help="trained models (names or checkpoint files)")
    parser.add_argument("--checkpoint", nargs="*", default=[], help="more trained model files")
    parser.add_argument(
        "--precisions",
        nargs="+",
        default=["onnx-fp32", "onnx-int8", "int8", "bf16"],
        help="onnx-fp32 / onnx-int8 (ONNX Runtime, fastsam3d[fast]), int8, bf16",
    )
    parser.add_argument(
        "--random", nargs="*", default=[], help="random-weight official-size models, e.g. fastsam3d sam-med3d"
    )
    parser.add_argument(
        "--modes",
        nargs="*",
        default=[],
        help="speed modes for the --checkpoint models: cluster-K (token clustering after block K), dilated",
    )
    parser.add_argument("--clicks", type=int, default=3)
    parser.add_argument("--crops", type=int, default=3)
    parser.add_argument("--min-voxels", type=int, default=50)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--device", default="cpu", help="where the candidates run (cuda: fp32 and bf16 there against fp32 on the CPU)"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for model_name in args.models + args.checkpoint:
        candidates = {
            _label(p, args.device): load_model(model_name, precision=p, device=args.device)
            for p in args.precisions
            if _supported(model_name, p, args.device)
        }
        for mode in args.modes if model_name in args.checkpoint else []:
            changes = (
                {"cluster_after": int(mode.split("-")[1])}
                if mode.startswith("cluster")
                else {"attention_mode": "dilated"}
            )
            candidates[mode] = _variant(model_name, **changes)
        rows = gate_trained(model_name, load_model(model_name), candidates, args.clicks, args.min_voxels, args.device)
        _report(model_name, rows, args.clicks)
    for name in args.random:
        rows = gate_random(name, args.precisions, args.crops, device=args.device)
        for precision in args.precisions:
            chosen = [r for r in rows if r["precision"] == precision]
            low = min(r["logits_correlation"] for r in chosen)
            print(
                f"{name} (random weights) {_label(precision, args.device)}: {len(chosen)} crops; logits correlation min {low:.5f}; "
                f"mask Dice vs fp32 min {min(r['mask_dice_vs_fp32'] for r in chosen):.4f}; gate >= 0.999: "
                f"{'PASS' if low >= 0.999 else 'FAIL'}"
            )


def _label(precision: str, device: str) -> str:
    return precision if device == "cpu" else f"{precision}@{device}"


def _supported(model_name: str, precision: str, device: str = "cpu") -> bool:
    try:
        load_model(model_name, precision=precision, device=device)
    except ValueError as error:
        print(f"{model_name} {precision}: skipped ({error})")
        return False
    return True


if __name__ == "__main__":
    main()
