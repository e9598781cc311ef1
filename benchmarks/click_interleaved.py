"""The per-click path of two versions of the code interleaved in one process: each measurement
alternates between them, round after round, so that the machine's drift (2x on a shared 2-core CPU,
within minutes) falls on both alike. ``click_ab.py`` runs them in separate processes and also
checks masks; this one is for small differences.

    python benchmarks/click_interleaved.py 4f52080               # that commit against the working tree
    python benchmarks/click_interleaved.py HEAD~2 --rounds 20

The baseline's package is checked out into a temporary git worktree and imported under another
name (``fastsam3d_baseline``; the package imports itself by relative imports only). On 2 threads,
per round and version: the shipped ``default`` model's ``encode`` (64³) and ``decode`` (three
clicks, a previous mask), a ``Session`` (``default``, fp32, max_rois=1) on a 512x512x300 int16
``.nii``: a new object's first click at a new place (crop, encoder, decoder, paste) and the median
of its four further clicks; the random-weight student (``fastsam3d``, fp32): its mask decoder and a
session's further click. Prints, per measurement, the median and min (ms) of each version and the
median of the per-round ratios after / before.
"""

from __future__ import annotations

import argparse
import importlib
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BASELINE_PACKAGE = "fastsam3d_baseline"
FURTHER_CLICKS = 4


def _seconds(function: Callable[..., object], *args: object, **kwargs: object) -> float:
    started = time.perf_counter()
    function(*args, **kwargs)
    return time.perf_counter() - started


class Version:
    """One version's models and sessions, and its measurements of one round."""

    def __init__(self, package, volume: Path) -> None:
        import torch

        self.package = package
        self.default = package.load_model("default").eval()
        torch.manual_seed(0)
        self.student = package.build_model("fastsam3d").eval()
        self.sessions = {}
        for name, model in (("default", self.default), ("fastsam3d", self.student)):
            session = package.Session(model, device="cpu", max_rois=1, precision="fp32")
            session.set_image(volume)
            session.add_click((256, 256, 150))  # the first click of a process pays lazy initialisation
            self.sessions[name] = session
        generator = torch.Generator().manual_seed(0)
        self.crop = torch.randn(1, 1, 64, 64, 64, generator=generator) * 300 + 40
        self.previous = torch.randn(1, 1, 64, 64, 64, generator=generator)
        self.points = torch.tensor([[[32.0, 30, 33], [20.0, 40, 30], [16.0, 32, 32]]])
        self.labels = torch.tensor([[1, 0, 1]])
        with torch.inference_mode():
            self.features = self.default.encode(self.crop)
        self.embedding = torch.randn(1, 384, 8, 8, 8, generator=generator)
        self.student_previous = torch.randn(1, 1, 32, 32, 32, generator=generator)
        self.student_points = torch.rand(1, 3, 3, generator=generator) * 128

    def measure(self, centre: tuple[int, int, int]) -> dict[str, float]:
        """Seconds of each measurement, for a new object at ``centre``."""
        import torch

        result = {}
        with torch.inference_mode():
            result["default encode"] = _seconds(lambda: self.default.encode(self.crop))
            result["default decode"] = _seconds(
                lambda: self.default.decode(self.features, self.points, self.labels, mask_input=self.previous)
            )
            result["student decode"] = _seconds(
                lambda: self.student.decode(
                    self.embedding, self.student_points, self.labels, mask_input=self.student_previous
                )
            )
        for name, session in self.sessions.items():
            session.add_object()
            first = _seconds(session.add_click, centre)
            if name == "default":
                result["default first click"] = first
            further, pastes = [], []
            for i in range(FURTHER_CLICKS):
                point = (centre[0] + i, centre[1] + 2, centre[2])
                further.append(_seconds(session.add_click, point, positive=i % 3 != 2))
                pastes.append(session.timings.paste)
            result[f"{name} further click"] = statistics.median(further)
            result[f"{name} further click: paste"] = statistics.median(pastes)
        return result


def _baseline_package(revision: str, folder: Path):
    """The package at ``revision``, importable as ``BASELINE_PACKAGE``."""
    from click_ab import checked_out

    with checked_out(revision, folder / "tree") as tree:
        shutil.copytree(tree / "src" / "fastsam3d", folder / "packages" / BASELINE_PACKAGE)
    sys.path.insert(0, str(folder / "packages"))
    return importlib.import_module(BASELINE_PACKAGE)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("baseline", help="a git revision to compare the working tree with")
    parser.add_argument("--rounds", type=int, default=12)
    args = parser.parse_args()

    import torch

    sys.path.insert(0, str(ROOT / "src"))
    sys.path.insert(0, str(Path(__file__).parent))
    from latency import write_test_volume

    import fastsam3d

    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as folder:
        volume = write_test_volume(Path(folder) / "ct.nii")
        versions = {"before": Version(_baseline_package(args.baseline, Path(folder)), volume)}
        versions["after"] = Version(fastsam3d, volume)
        runs: dict[str, list[dict[str, float]]] = {"before": [], "after": []}
        for round_ in range(args.rounds):
            centre = (150 + 37 * round_ % 200, 150 + 53 * round_ % 200, 60 + 29 * round_ % 180)
            order = ("before", "after") if round_ % 2 == 0 else ("after", "before")
            for label in order:
                runs[label].append(versions[label].measure(centre))
    print(
        f"| ms, {args.rounds} interleaved rounds | before ({args.baseline}): median (min) | after: median (min) | after / before |"
    )
    print("|---|---|---|---|")
    for key in runs["after"][0]:
        cells = []
        for label in ("before", "after"):
            values = [run[key] for run in runs[label]]
            cells.append(f"{1e3 * statistics.median(values):.1f} ({1e3 * min(values):.1f})")
        pairs = [(a[key], b[key]) for a, b in zip(runs["after"], runs["before"], strict=True) if b[key] > 0]
        ratio = f"{statistics.median(a / b for a, b in pairs):.2f}" if pairs else "-"
        print(f"| {key} | {cells[0]} | {cells[1]} | {ratio} |")


if __name__ == "__main__":
    main()
