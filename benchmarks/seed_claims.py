"""The seeds' headline comparison, measured here: time per 128³ volume for a 2D SAM run on every
slice vs the 3D teacher (SAM-Med3D) vs the FastSAM3D student, with FLOPs and parameters.

    python benchmarks/seed_claims.py                 # CPU, 2 threads
    python benchmarks/seed_claims.py --device cuda   # on a GPU

The FastSAM3D paper claims the student is 527x faster than 2D SAMs and 8.75x faster than 3D SAMs
"on the same volumes". Per model, one "volume" is what the model needs to segment a 128³ volume
once: the 3D models encode the 128³ crop and decode one prompt; a 2D model encodes each of the
128 slices (at its own input size) and decodes one prompt per slice. For the 2D models only
``--slices`` slices are timed and the time is scaled to 128 (marked "extrapolated"); their slice
encodings are independent, so this is exact up to timing noise. FLOPs come from
``torch.utils.flop_counter`` (matmuls and convolutions, counted as 2 per multiply-add), over one
slice for 2D models (x128). Random weights: time and FLOPs do not depend on them.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

SLICES = 128


def _timed(function, repeats: int, sync) -> float:
    function()  # warm-up
    sync()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        sync()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def _flops(function) -> int:
    counter = FlopCounterMode(display=False)
    with counter:
        function()
    return counter.get_total_flops()


def measure_3d(name: str, device: str, repeats: int, sync) -> dict:
    from fastsam3d import build_model

    model = build_model(name).to(device).eval()
    crop = torch.randn(1, 1, 128, 128, 128, device=device)
    points = torch.tensor([[[64.0, 64.0, 64.0]]], device=device)
    labels = torch.ones(1, 1, dtype=torch.int64, device=device)

    def run():
        with torch.inference_mode():
            embedding = model.encode(crop)
            model.decode(embedding, points, labels)

    seconds = _timed(run, repeats, sync)
    return {
        "model": name,
        "kind": "3D",
        "seconds_per_volume": seconds,
        "extrapolated": False,
        "gflops_per_volume": _flops(run) / 1e9,
        "parameters_m": sum(p.numel() for p in model.parameters()) / 1e6,
    }


def measure_2d(name: str, device: str, slices: int, sync) -> dict:
    from fastsam3d.modeling.tiny_vit import fuse_batchnorm
    from fastsam3d.registry import build_model, get_config

    config = get_config(name)
    model = build_model(config).to(device)
    if config.encoder == "tiny-vit":
        fuse_batchnorm(model.image_encoder)  # as loaded for inference
    image = torch.randn(1, 3, config.img_size, config.img_size, device=device)
    box = torch.tensor([[10.0, 10.0, config.img_size / 2, config.img_size / 2]], device=device)

    def one_slice():
        with torch.inference_mode():
            embedding = model.encode(image)
            model.decode(embedding, boxes=box)

    per_slice = _timed(one_slice, slices, sync)
    return {
        "model": name,
        "kind": f"2D x {SLICES} slices",
        "seconds_per_volume": per_slice * SLICES,
        "seconds_per_slice": per_slice,
        "extrapolated": True,
        "gflops_per_volume": _flops(one_slice) * SLICES / 1e9,
        "parameters_m": sum(p.numel() for p in model.parameters()) / 1e6,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per 3D model (median)")
    parser.add_argument("--slices", type=int, default=2, help="timed slices per 2D model (median, x128)")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    sync = (lambda: torch.cuda.synchronize()) if args.device.startswith("cuda") else (lambda: None)
    rows = [measure_3d(name, args.device, args.repeats, sync) for name in ("fastsam3d", "sam-med3d")]
    rows += [measure_2d(name, args.device, args.slices, sync) for name in ("sam-vit-b", "sam-med2d", "litemedsam")]
    student = rows[0]["seconds_per_volume"]
    device = (
        torch.cuda.get_device_name()
        if args.device.startswith("cuda")
        else f"{platform.processor() or platform.machine()}, {args.threads} threads"
    )
    print(f"device: {device}; torch {torch.__version__}")
    print(f"{'model':12s} {'kind':16s} {'s/volume':>10s} {'GFLOP/vol':>10s} {'params M':>9s} {'student is':>12s}")
    for row in rows:
        row["student_speedup"] = row["seconds_per_volume"] / student
        mark = "*" if row["extrapolated"] else " "
        print(
            f"{row['model']:12s} {row['kind']:16s} {row['seconds_per_volume']:9.3f}{mark} {row['gflops_per_volume']:10.1f} "
            f"{row['parameters_m']:9.1f} {row['student_speedup']:11.2f}x"
        )
    print(f"* {SLICES} x the median time of {args.slices} slices. Seeds claim: 527x vs 2D SAMs, 8.75x vs 3D SAMs.")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"device": device, "rows": rows}, handle, indent=1)


if __name__ == "__main__":
    main()
