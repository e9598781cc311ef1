"""Where a cached click's decoder time goes: the shipped ``default`` model's ``decode`` on one 64³
ROI's cached features, by PyTorch operator (torch.profiler), on the CPU.

    python benchmarks/decoder_profile.py [--threads 2] [--repeats 10]

Prints the median decode time (two clicks, a previous mask, their similarity maps computed) and the
operators that take it, per decode. The starting point for a lighter 64³ head (issue: a 20 ms click
on the CPU). Then the decode time as a session's clicks accumulate (``--clicks``): each decode adds
one click, on the features as the engine caches them (the similarity maps kept between clicks) and
on the same tensors without that memo (every map computed afresh), alternately, median over
``--rounds``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch.profiler import ProfilerActivity, profile

from fastsam3d.modeling.click_unet import ClickUNetFeatures
from fastsam3d.registry import load_model

REPORTED_COUNTS = (2, 5, 10, 20, 30, 40)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--clicks", type=int, default=40, help="clicks accumulated in the second part (0: skip)")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = load_model("default", device="cpu", precision="auto")
    size = model.img_size
    with torch.inference_mode():
        features = model.encode(torch.randn(1, 1, size, size, size))
        afresh = ClickUNetFeatures(features.shares, features.unit, features.head)  # no memo: a new click's maps
        coords = torch.tensor([[[size / 2, size / 2 - 2, size / 2 + 1], [size / 3, size * 0.6, size / 2]]])
        labels = torch.tensor([[1, 0]])
        previous = torch.randn(1, 1, size, size, size)

        def decode() -> None:
            model.decode(afresh, coords, labels, mask_input=previous)

        for _ in range(3):
            decode()
        times = []
        for _ in range(args.repeats):
            started = time.perf_counter()
            decode()
            times.append(time.perf_counter() - started)
        print(f"default decode, {args.threads} threads: median {1e3 * statistics.median(times):.1f} ms")
        with profile(activities=[ProfilerActivity.CPU]) as profiler:
            for _ in range(args.repeats):
                decode()
    rows = sorted(profiler.key_averages(), key=lambda row: -row.self_cpu_time_total)
    for row in rows[:10]:
        print(
            f"  {row.key:32s} {row.self_cpu_time_total / 1e3 / args.repeats:6.2f} ms per decode ({row.count // args.repeats} calls)"
        )
    if args.clicks:
        accumulating_clicks(model, features, args.clicks, args.rounds)


def accumulating_clicks(model, features: ClickUNetFeatures, count: int, rounds: int) -> None:
    """Decode time after 1, 2, ... ``count`` clicks (random voxels, 3 in 5 include), with and without
    the features' memo of similarity maps."""
    generator = torch.Generator().manual_seed(0)
    size = model.img_size
    coords = torch.rand(1, count, 3, generator=generator) * (size - 1)
    labels = (torch.rand(1, count, generator=generator) < 0.6).long()
    times: dict[tuple[str, int], list[float]] = {}
    with torch.inference_mode():
        for _ in range(rounds):
            variants = {
                "kept maps": ClickUNetFeatures(features.shares, features.unit, features.head, {}),
                "afresh": ClickUNetFeatures(features.shares, features.unit, features.head),
            }
            for clicks in range(1, count + 1):
                for name, variant in variants.items():
                    started = time.perf_counter()
                    model.decode(variant, coords[:, :clicks], labels[:, :clicks])
                    times.setdefault((name, clicks), []).append(time.perf_counter() - started)
    print(f"default decode as clicks accumulate (median of {rounds} rounds), ms:")
    for clicks in [c for c in REPORTED_COUNTS if c <= count]:
        row = ", ".join(
            f"{name} {1e3 * statistics.median(times[name, clicks]):.1f}" for name in ("kept maps", "afresh")
        )
        print(f"  {clicks:3d} clicks: {row}")


if __name__ == "__main__":
    main()
