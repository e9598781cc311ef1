"""Latency and memory of the interactive engine, teacher vs student, side by side.

    python benchmarks/latency.py                       # CPU, 2 threads, fastsam3d + sam-med3d
    python benchmarks/latency.py --device cuda         # on a GPU
    python benchmarks/latency.py --verify-padding      # also run the teacher's literal padded windows
    python benchmarks/latency.py --models default      # the shipped model's architecture (64³ ROI at 3 mm)

Random weights (timing does not depend on them). Each model runs in its own process so that
peak RSS is per model. Per model it reports: encoder time per ROI (128³ for the SAMs, 64³ for the default; first click), the time of
a further click with the cached embedding (prompt encoder + decoder + upsampling + paste back
into a 512x512x300 int16 volume, measured around ``Session.add_click``), the same split by
stage, uncertainty with N=16 decoder runs, and the process's peak RSS after the clicks and at the end.
The volume alone is 157 MB (int16), the label map 78 MB.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time


def _median_time(function, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def worker(name: str, device: str, threads: int, repeats: int, verify_padding: bool) -> dict:
    import numpy as np
    import torch

    from fastsam3d import Session, Volume, build_model

    torch.set_num_threads(threads)
    model = build_model(name).to(device)
    rng = np.random.default_rng(0)
    array = np.empty((512, 512, 300), dtype=np.int16)  # filled in slabs: no full-size temporaries
    for start in range(0, 512, 32):
        array[start : start + 32] = rng.integers(-1000, 1500, size=(32, 512, 300), dtype=np.int16)
    volume = Volume(array, np.array([0.8, 0.8, 1.5]), np.zeros(3), np.eye(3))
    session = Session(model, device=device, max_rois=1)  # random weights: keep to one ROI
    session.set_image(volume)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)

    crop = torch.randn(1, 1, *(model.img_size,) * 3, device=device)
    with torch.inference_mode():
        model.encode(crop)  # warm-up
        sync()
        encoder = _median_time(lambda: (model.encode(crop), sync()), repeats)

    session.add_click((256, 256, 150))  # first click: encoder + decoder
    first_click = session.timings.total
    clicks, stages = [], []
    for index in range(max(repeats, 10)):
        point = (256 + (index % 5), 250 + (index % 7), 150 + (index % 3))
        started = time.perf_counter()
        session.add_click(point, positive=index % 3 != 2)
        clicks.append(time.perf_counter() - started)
        stages.append((session.timings.decoder, session.timings.paste))
    assert session.encoder_runs == 1, "a click inside the ROI re-ran the encoder"
    rss_clicks = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    uncertainty = _median_time(lambda: session.uncertainty(samples=16), 3)
    result = {
        "model": name,
        "device": device,
        "threads": threads,
        "encoder_s": encoder,
        "first_click_s": first_click,
        "click_ms": 1e3 * statistics.median(clicks),
        "decoder_ms": 1e3 * statistics.median(s[0] for s in stages),
        "paste_ms": 1e3 * statistics.median(s[1] for s in stages),
        "uncertainty16_ms": 1e3 * uncertainty,
        "peak_rss_clicks_mb": rss_clicks,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    if verify_padding and getattr(model.config, "window_size", 0):
        with torch.inference_mode():
            for name_, parameter in model.image_encoder.named_parameters():
                if "rel_pos" in name_ or "pos_embed" in name_:  # zero at init: make the check meaningful
                    parameter.normal_(0, 0.3)
            fast = model.encode(crop)
            model.image_encoder.set_exact_padding(True)
            started = time.perf_counter()
            literal = model.encode(crop)
            result["literal_padding_encoder_s"] = time.perf_counter() - started
            result["padding_shortcut_max_abs_diff"] = (fast - literal).abs().max().item()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["fastsam3d", "sam-med3d"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--verify-padding", action="store_true")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.device, args.threads, args.repeats, args.verify_padding)))
        return
    rows = []
    for name in args.models:
        command = [sys.executable, __file__, "--worker", name, "--device", args.device, "--threads", str(args.threads),
                   "--repeats", str(args.repeats)] + (["--verify-padding"] if args.verify_padding else [])
        output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
        rows.append(json.loads(output.strip().splitlines()[-1]))
    import platform

    import torch

    print(f"# {platform.processor() or platform.machine()}, {args.device}, {args.threads} threads, torch {torch.__version__}")
    columns = [
        "model", "encoder_s", "first_click_s", "click_ms", "decoder_ms", "paste_ms", "uncertainty16_ms",
        "peak_rss_clicks_mb", "peak_rss_mb",
    ]
    extra = sorted({k for row in rows for k in row} - set(columns) - {"device", "threads"})
    header = columns + extra
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        cells = [row.get(c, "") for c in header]
        print("| " + " | ".join(f"{c:.3g}" if isinstance(c, float) else str(c) for c in cells) + " |")


if __name__ == "__main__":
    main()
