"""The engine's stranded-click zoom rule (``prompts3d.clicks_stranded``) on and off, per structure:
the shipped ``default`` model, centre clicks, Dice per click.

    python benchmarks/zoom_rule.py                                   # the development volumes
    python benchmarks/zoom_rule.py --data ~/.cache/fastsam3d/brains/brains.json   # the MNI152 brain

For every structure of every case (at least ``--min-voxels``), one session with the rule and one
without receive simulated centre clicks (the interior-most voxel of the largest error). Prints the
mean Dice per click per case for both, then every structure whose Dice differs.
"""

from __future__ import annotations

import argparse
import statistics

import torch

from fastsam3d.clicks import center_click, dice
from fastsam3d.data.devdata import dev_manifest
from fastsam3d.engine import session3d
from fastsam3d.engine.session3d import Session
from fastsam3d.evaluation.datasets import load_cases


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", help="a dataset manifest (default: the development volumes)")
    parser.add_argument("--clicks", type=int, default=5)
    parser.add_argument("--min-voxels", type=int, default=50)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = args.data or dev_manifest()
    if data is None:
        raise SystemExit("development data not fetched: run `fastsam3d data fetch`")
    rule = session3d.clicks_stranded
    scores: dict[bool, dict[tuple[str, str], list[float]]] = {True: {}, False: {}}
    for case in load_cases(data, None):
        image, label = case.load()
        for use_rule in (True, False):
            session3d.clicks_stranded = rule if use_rule else (lambda *_: False)
            session = Session("default", precision="fp32")
            session.set_image(image)
            for class_id, name in sorted(case.classes.items()):
                target = label.array == class_id
                if target.sum() < args.min_voxels:
                    continue
                session.add_object()
                dices = []
                for _ in range(args.clicks):
                    click = center_click(session.mask(), target, image.spacing)
                    if click is not None:
                        session.add_click(*click)
                    dices.append(dice(session.mask(), target))
                scores[use_rule][(case.name, name)] = dices
        session3d.clicks_stranded = rule
        keys = [key for key in scores[True] if key[0] == case.name]
        means = {
            on: [round(statistics.mean(scores[on][k][c] for k in keys), 3) for c in range(args.clicks)] for on in scores
        }
        print(f"{case.name}: {len(keys)} structures, mean Dice per click: rule off {means[False]}, on {means[True]}")
    changed = [key for key in scores[True] if scores[True][key] != scores[False][key]]
    print(f"structures that changed: {len(changed)}")
    for key in changed:
        off, on = ([round(v, 2) for v in scores[s][key]] for s in (False, True))
        print(f"  {key[0]} {key[1]}: off {off}, on {on}")


if __name__ == "__main__":
    main()
