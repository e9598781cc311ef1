"""The per-click path of two versions of the code, run alternately: a before/after that the
machine's drift between runs does not swamp.

    python benchmarks/click_ab.py 7993a7a              # that commit against the working tree, 3 rounds
    python benchmarks/click_ab.py HEAD~3 --rounds 5 --no-masks
    python benchmarks/click_ab.py 15bd590 --encoders --no-masks   # and the 3D ViT encoders

The baseline is checked out into a temporary git worktree. Each round runs one process per version
(baseline first) that times, on 2 threads: the shipped ``default`` model's ``encode`` and
``decode`` (64³), the random-weight student's mask decoder, and a ``Session`` per model (``default``
and ``fastsam3d`` in fp32, max_rois=1) on a 512x512x300 int16 ``.nii``: the first click and its
decoder + paste, then the median of six further clicks and their paste. ``--encoders`` adds the
random-weight student's and teacher's image encoders, fp32 and int8 (the fastest of five encodes).
Prints the medians over the rounds, with min-max.

Then the equal-mask check of the same two versions: the working tree's ``default`` model segments
every structure of the development volumes (``fastsam3d data fetch``) with three centre clicks
(the interior-most voxel of the largest error), the baseline replays exactly those clicks, and
the Dice of the two masks is reported per structure (minimum, median, count below 0.98).
``--no-masks`` skips it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _times_ms(function, repeats: int) -> list[float]:
    """``repeats`` timings (ms) after one warm-up call."""
    function()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        times.append(1e3 * (time.perf_counter() - started))
    return times


def _median_ms(function, repeats: int = 7) -> float:
    return statistics.median(_times_ms(function, repeats))


def measure_encoders() -> dict[str, float]:
    """The 3D ViT encoders (random weights) in fp32 and int8: the fastest of five encodes (ms)."""
    import torch

    from fastsam3d import build_model
    from fastsam3d.runtime import apply_model_precision

    result = {}
    crop = torch.randn(1, 1, 128, 128, 128, generator=torch.Generator().manual_seed(0))
    for name in ("fastsam3d", "sam-med3d"):
        for precision in ("fp32", "int8"):
            torch.manual_seed(0)
            model = apply_model_precision(build_model(name).eval(), precision)
            with torch.inference_mode():
                result[f"{name} encode, {precision} (min)"] = min(_times_ms(lambda model=model: model.encode(crop), 5))
            del model
    return result


def measure(volume: Path) -> dict[str, float]:
    """One process's figures (ms) for the code on ``sys.path``."""
    import torch

    from fastsam3d import Session, build_model, load_model

    result = {}
    with torch.inference_mode():
        default = load_model("default").eval()
        crop = torch.randn(1, 1, 64, 64, 64) * 300 + 40
        features = default.encode(crop)
        points, labels = torch.tensor([[[32.0, 30, 33], [20.0, 40, 30]]]), torch.tensor([[1, 0]])
        result["default encode"] = _median_ms(lambda: default.encode(crop))
        result["default decode"] = _median_ms(lambda: default.decode(features, points, labels))
        torch.manual_seed(0)
        student = build_model("fastsam3d").eval()
        embedding, previous = torch.randn(1, 384, 8, 8, 8), torch.randn(1, 1, 32, 32, 32)
        points3, labels3 = torch.rand(1, 3, 3) * 128, torch.tensor([[1, 1, 0]])
        result["student decode"] = _median_ms(lambda: student.decode(embedding, points3, labels3, mask_input=previous))
    for name in ("default", "fastsam3d"):
        torch.manual_seed(0)
        model = load_model("default") if name == "default" else build_model(name)
        session = Session(model, device="cpu", max_rois=1, precision="fp32")
        session.set_image(volume)
        first = session.add_click((256, 256, 150)).timings
        further = [session.add_click((256 + i, 250, 150), positive=i % 3 != 2).timings for i in range(6)]
        result[f"{name} first click"] = 1e3 * first.total
        result[f"{name} first click: decoder + paste"] = 1e3 * (first.decoder + first.paste)
        result[f"{name} further click"] = 1e3 * statistics.median(t.total for t in further)
        result[f"{name} further click: paste"] = 1e3 * statistics.median(t.paste for t in further)
    return result


def drive_masks(store: Path) -> None:
    """Segment every dev structure with centre clicks; keep the clicks and the packed masks."""
    import numpy as np

    from fastsam3d.clicks import center_click

    clicks_by_structure, masks = {}, {}
    for key, image, target, session in dev_structures():
        prediction, clicks = np.zeros_like(target), []
        for _ in range(3):
            click = center_click(prediction, target, image.spacing)
            if click is None:
                break
            clicks.append([[float(v) for v in click[0]], bool(click[1])])
            session.add_click(click[0], positive=click[1])
            prediction = session.mask()
        clicks_by_structure[key], masks[key] = clicks, np.packbits(prediction)
    np.savez(store, **masks)
    store.with_suffix(".json").write_text(json.dumps(clicks_by_structure))


def replay_masks(store: Path) -> dict[str, float]:
    """Replay the stored clicks; Dice of each mask against the stored one."""
    import numpy as np

    from fastsam3d.clicks import dice

    masks, clicks_by_structure = np.load(store), json.loads(store.with_suffix(".json").read_text())
    result = {}
    for key, _, target, session in dev_structures():
        for point, positive in clicks_by_structure[key]:
            session.add_click(point, positive=positive)
        theirs = np.unpackbits(masks[key])[: target.size].reshape(target.shape).astype(bool)
        result[key] = dice(session.mask(), theirs)
    return result


def dev_structures(model="default"):
    """(case/structure, image, label mask, session with a fresh object) for every dev structure of at
    least 50 voxels, one ``model`` session (a name or a loaded model) per case."""
    from fastsam3d import Session
    from fastsam3d.data.devdata import default_root
    from fastsam3d.evaluation.datasets import load_cases

    for case in load_cases(default_root() / "dataset.json"):
        image, truth = case.load()
        session = Session(model, device="cpu")
        session.set_image(image)
        for class_id, name in case.classes.items():
            target = truth.array == class_id
            if target.sum() >= 50:
                session.add_object(name)
                yield f"{case.name}/{name}", image, target, session


def _in_tree(tree: Path, *arguments: str) -> str:
    """This script's last output line, run as a worker on the code of ``tree``."""
    environment = dict(os.environ, PYTHONPATH=str(tree / "src"))
    command = [sys.executable, __file__, "-", *arguments]
    done = subprocess.run(command, env=environment, capture_output=True, text=True, check=True)
    return done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""


@contextlib.contextmanager
def checked_out(revision: str, tree: Path) -> Iterator[Path]:
    """The repository at ``revision`` in a temporary git worktree at ``tree``, removed afterwards."""
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "-q", "--detach", str(tree), revision], check=True)
    try:
        yield tree
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], check=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("baseline", help="a git revision to compare the working tree with")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-masks", action="store_true", help="skip the equal-mask check on the dev volumes")
    parser.add_argument("--encoders", action="store_true", help="also time the 3D ViT encoders, fp32 and int8")
    parser.add_argument("--volume", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--worker", choices=("time", "encoders", "drive", "replay"), help=argparse.SUPPRESS)
    parser.add_argument("--store", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        import torch

        torch.set_num_threads(2)
    if args.worker == "time":
        print(json.dumps(measure(args.volume)))
        return
    if args.worker == "encoders":
        print(json.dumps(measure_encoders()))
        return
    if args.worker == "drive":
        drive_masks(args.store)
        return
    if args.worker == "replay":
        print(json.dumps(replay_masks(args.store)))
        return
    sys.path.insert(0, str(Path(__file__).parent))
    from latency import write_test_volume

    with tempfile.TemporaryDirectory() as folder, checked_out(args.baseline, Path(folder) / "baseline") as baseline:
        volume = write_test_volume(Path(folder) / "ct.nii")
        runs: dict[str, list[dict]] = {"before": [], "after": []}
        for round_ in range(args.rounds):
            for label, tree in (("before", baseline), ("after", ROOT)):
                run = json.loads(_in_tree(tree, "--worker", "time", "--volume", str(volume)))
                if args.encoders:  # in a process of its own: the clicks' figures stay comparable
                    run.update(json.loads(_in_tree(tree, "--worker", "encoders")))
                runs[label].append(run)
            print(f"# round {round_ + 1} of {args.rounds} done", flush=True)
        if not args.no_masks:
            store = Path(folder) / "masks.npz"
            _in_tree(ROOT, "--worker", "drive", "--store", str(store))
            agreement = json.loads(_in_tree(baseline, "--worker", "replay", "--store", str(store)))
    print(f"| ms, median (min-max) of {args.rounds} rounds | before ({args.baseline}) | after (working tree) |")
    print("|---|---|---|")
    for key in runs["after"][0]:
        cells = []
        for label in ("before", "after"):
            values = [run[key] for run in runs[label] if key in run]
            cells.append(f"{statistics.median(values):.0f} ({min(values):.0f}-{max(values):.0f})")
        print(f"| {key} | {cells[0]} | {cells[1]} |")
    if not args.no_masks:
        values = sorted(agreement.values())
        worst = min(agreement, key=agreement.get)
        print(
            f"\n`default` masks, {len(values)} dev structures x 3 centre clicks, baseline replaying the working "
            f"tree's clicks: Dice min {values[0]:.4f} ({worst}), median {values[len(values) // 2]:.4f}, "
            f"below 0.98: {sum(v < 0.98 for v in values)}"
        )


if __name__ == "__main__":
    main()
