"""Where a cached click's decoder time goes: the shipped ``default`` model's ``decode`` on one 64³
ROI's cached features, by PyTorch operator (torch.profiler), on the CPU.

    python benchmarks/decoder_profile.py [--threads 2] [--repeats 10]

Prints the median decode time (two clicks, a previous mask) and the operators that take it, per
decode. The starting point for a lighter 64³ head (issue: a 20 ms click on the CPU).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch.profiler import ProfilerActivity, profile

from fastsam3d.registry import load_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = load_model("default", device="cpu", precision="auto")
    size = model.img_size
    with torch.inference_mode():
        features = model.encode(torch.randn(1, 1, size, size, size))
        coords = torch.tensor([[[size / 2, size / 2 - 2, size / 2 + 1], [size / 3, size * 0.6, size / 2]]])
        labels = torch.tensor([[1, 0]])
        previous = torch.randn(1, 1, size, size, size)

        def decode() -> None:
            model.decode(features, coords, labels, mask_input=previous)

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


if __name__ == "__main__":
    main()
