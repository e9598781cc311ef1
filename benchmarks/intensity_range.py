"""Does the default model care about the scanner's intensity range? The same held-out volumes as
stored (Hounsfield units / MR values), rescaled to uint8 [0, 255], and to float [0, 1]: Dice per
structure after each simulated `center` click, side by side.

    python benchmarks/intensity_range.py [--model default] [--cases mr,ct_dicom] [--clicks 5]
"""

from __future__ import annotations

import argparse

import numpy as np

from fastsam3d import load_model
from fastsam3d.clicks import center_click, dice
from fastsam3d.data.devdata import dev_manifest
from fastsam3d.engine.session3d import Session
from fastsam3d.evaluation.datasets import load_cases

STRUCTURES = ["liver", "spleen", "kidney_left", "kidney_right", "aorta", "stomach", "pancreas", "inferior_vena_cava"]


def rescaled(array: np.ndarray, kind: str) -> np.ndarray:
    unit = (array.astype(np.float64) - array.min()) / max(float(np.ptp(array)), 1e-9)
    if kind == "uint8":
        return np.round(unit * 255).astype(np.uint8)
    if kind == "float01":
        return unit.astype(np.float32)
    return array


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--cases", default="mr,ct_dicom")
    parser.add_argument("--clicks", type=int, default=5)
    args = parser.parse_args()
    manifest = dev_manifest()
    if manifest is None:
        raise SystemExit("development data not fetched: run `fastsam3d data fetch`")
    model = load_model(args.model)
    kinds = ("stored", "uint8", "float01")
    print(f"| case | structure | {' | '.join(f'Dice@{args.clicks} {k}' for k in kinds)} | max difference |")
    print("|---|---|---|---|---|---|")
    differences = []
    for case in load_cases(manifest, STRUCTURES):
        if case.name not in args.cases.split(","):
            continue
        image, label = case.load()
        for class_id, name in sorted(case.classes.items()):
            target = label.array == class_id
            if target.sum() < 50:
                continue
            scores = []
            for kind in kinds:
                session = Session(model)
                session.set_image(image.with_array(rescaled(image.array, kind)))
                session.add_object(name)
                for _ in range(args.clicks):
                    click = center_click(session.mask(), target, image.spacing)
                    if click is None:
                        break
                    session.add_click(*click)
                scores.append(dice(session.mask(), target))
            difference = max(scores) - min(scores)
            differences.append(difference)
            print(f"| {case.name} | {name} | " + " | ".join(f"{s:.3f}" for s in scores) + f" | {difference:.3f} |")
    print(
        f"\nlargest difference over {len(differences)} structures: {max(differences):.3f}; mean {np.mean(differences):.3f}"
    )


if __name__ == "__main__":
    main()
