"""Latency and memory of the interactive engine per model, fp32 beside the fast path, in one run.

    python benchmarks/latency.py                       # CPU, 2 threads, fastsam3d + sam-med3d, fp32 vs auto
    python benchmarks/latency.py --models default fastsam3d --precisions fp32 int8 bf16
    python benchmarks/latency.py --precisions fp32 int8 onnx-fp32 onnx-int8   # torch beside ONNX Runtime
    python benchmarks/latency.py --device cuda --threads 8 --models fastsam3d sam-med3d default \
        --precisions fp32 bf16 bf16+compile bf16+cudagraphs --sdpa   # on a GPU (benchmarks/gpu_check.sh)
    python benchmarks/latency.py --verify-padding      # also run the teacher's literal padded windows

Random weights (timing does not depend on them), loaded from a checkpoint file as a user's model
is. Each model and precision runs in its own process (under ``/usr/bin/time -v`` when present) so
that peak RSS is per run. Per run it reports: encoder
time per ROI (128³ for the SAMs, 64³ for the default; min and median of the repeats), the first
click (encoder + decoder + paste, as the answer's ``timings``; ``warm_first_click_s``: the first click of a second
object in another ROI, once the process is warm, as on a server), the time of a further click with the
cached embedding (prompt encoder + decoder + upsampling + paste back into a 512x512x300 int16
volume, measured around ``Session.add_click``), the same split by stage, uncertainty with N=16
decoder runs, and peak RSS (after the clicks, at the end, and ``time -v``'s maximum resident set
size). Then the speed-up of each precision over fp32. The session reads the volume from a file:
``--input .nii`` (default) is memory-mapped, so only its ROIs' pages become resident; ``.nii.gz``
is decompressed (157 MB). The label map (78 MB) is allocated untouched and filled where objects are.
The ONNX precisions export the encoder once per weights into the cache (``fastsam3d.runtime``); the
weights are seeded, so only a model's first run includes that export (~1.1 GB peak RSS). ``auto`` is what ``Session``/``segment``/``serve`` use by default.
A precision with ``+compile`` runs the encoder under ``torch.compile`` (``+cudagraphs``: mode
"reduce-overhead", replayed as a CUDA graph); its compile time is the row's ``warm_up_s``. ``--sdpa``
adds the encoder time with each of PyTorch's attention kernels (flash, memory-efficient, cuDNN, math).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

# ``--precisions bf16+compile``: the encoder under torch.compile; ``+cudagraphs`` also replays it as a CUDA graph
COMPILE_MODES = {"compile": "default", "cudagraphs": "reduce-overhead"}


def _times(function, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return times


def _median_time(function, repeats: int) -> float:
    return statistics.median(_times(function, repeats))


def write_test_volume(path: Path) -> Path:
    """A 512x512x300 int16 CT-like volume of random values at 0.8 x 0.8 x 1.5 mm, written once."""
    import nibabel
    import numpy as np

    rng = np.random.default_rng(0)
    array = np.empty((512, 512, 300), dtype=np.int16)  # filled in slabs: no full-size temporaries
    for start in range(0, 512, 32):
        array[start : start + 32] = rng.integers(-1000, 1500, size=(32, 512, 300), dtype=np.int16)
    # nibabel (a core dependency) rather than SimpleITK, which the session does not need for NIfTI either
    nibabel.save(nibabel.Nifti1Image(array, np.diag([-0.8, -0.8, 1.5, 1.0])), path)
    return path


def checkpoint_path(name: str, folder: Path) -> Path:
    """Where the run keeps a model's random weights: beside its test volume."""
    return folder / f"{name}.safetensors"


def write_checkpoint(name: str, folder: Path) -> Path:
    """The model's random weights in a checkpoint file, which the workers load as a user's session does.
    Seeded: the same weights in every run, so the ONNX cache is hit from the second run on."""
    import torch

    from fastsam3d import build_model, save_model

    torch.manual_seed(0)
    return save_model(build_model(name), checkpoint_path(name, folder))


def worker(
    name: str, device: str, threads: int, repeats: int, verify_padding: bool, precision: str, volume: Path
) -> dict:
    import torch

    from fastsam3d import Session, load_model

    torch.set_num_threads(threads)
    precision, _, compiled = precision.partition("+")
    model = load_model(checkpoint_path(name, volume.parent), device=device, precision=precision)
    if compiled:  # the encoder only: the per-click decoder sees a new number of points on every click
        model.encode = torch.compile(model.encode, mode=COMPILE_MODES[compiled])
    session = Session(model, device=device, max_rois=1)  # random weights: keep to one ROI
    session.set_image(volume)  # read as a user's session reads it (.nii: memory-mapped)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)

    crop = torch.randn(1, 1, *(model.img_size,) * 3, device=device)
    with torch.inference_mode():
        started = time.perf_counter()
        for _ in range(3 if compiled == "cudagraphs" else 1):  # warm-up (CUDA graphs record on the third call)
            model.encode(crop)
        sync()
        warm_up = time.perf_counter() - started
        encoder_times = _times(lambda: (model.encode(crop), sync()), repeats)

    first = session.add_click((256, 256, 150)).timings  # first click: crop + encoder, decoder, paste
    first_encoder_runs = session.encoder_runs  # 2 when the mask fills a zooming model's fine ROI
    clicks, stages = [], []
    for index in range(max(repeats, 10)):
        point = (256 + (index % 5), 250 + (index % 7), 150 + (index % 3))
        started = time.perf_counter()
        timings = session.add_click(point, positive=index % 3 != 2).timings
        clicks.append(time.perf_counter() - started)
        stages.append((timings.decoder, timings.paste))
    assert session.encoder_runs == first_encoder_runs, "a click inside the ROI re-ran the encoder"
    rss_clicks = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    session.add_object()  # a second object far away: a first click in a warm process (a server's every first click)
    warm_first = session.add_click((120, 120, 60)).timings.total
    uncertainty = _median_time(lambda: session.uncertainty(samples=16), 3)
    result = {
        "model": name,
        "input": volume.name.partition(".")[2],
        "precision": model.precision + (f"+{compiled}" if compiled else ""),
        "warm_up_s": warm_up,
        "device": device,
        "threads": threads,
        "encoder_s": statistics.median(encoder_times),
        "encoder_min_s": min(encoder_times),
        "first_click_s": first.total,
        "first_click_encoder_runs": first_encoder_runs,
        "first_crop_encoder_s": first.encoder,
        "first_decoder_paste_ms": 1e3 * (first.decoder + first.paste),
        "warm_first_click_s": warm_first,
        "click_ms": 1e3 * statistics.median(clicks),
        "decoder_ms": 1e3 * statistics.median(s[0] for s in stages),
        "paste_ms": 1e3 * statistics.median(s[1] for s in stages),
        "uncertainty16_ms": 1e3 * uncertainty,
        "peak_rss_clicks_mb": rss_clicks,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    if device.startswith("cuda"):
        result["gpu_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    if verify_padding and getattr(model.config, "window_size", 0) and precision == "fp32":
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


def _run(name: str, precision: str, args: argparse.Namespace) -> dict:
    """One model in one precision, in its own process; with ``time -v``'s peak RSS when available."""
    command = [
        sys.executable,
        __file__,
        "--worker",
        name,
        "--precisions",
        precision,
        "--device",
        args.device,
        "--threads",
        str(args.threads),
        "--repeats",
        str(args.repeats),
        "--volume",
        str(args.volume),
    ]
    command += ["--verify-padding"] if args.verify_padding else []
    timed = Path("/usr/bin/time").is_file()
    done = subprocess.run(
        (["/usr/bin/time", "-v"] if timed else []) + command, check=False, capture_output=True, text=True
    )
    if done.returncode:
        print(f"# {name} {precision}: failed: {done.stderr.strip().splitlines()[-1]}")
        return None
    row = json.loads(done.stdout.strip().splitlines()[-1])
    found = re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr)
    if found:
        row["time_v_max_rss_mb"] = int(found.group(1)) / 1024
    row["requested"] = precision
    print(f"# {json.dumps(row)}", flush=True)  # as it comes: a run cut short keeps what it measured
    return row


def paired_encoder(name: str, precisions: list[str], device: str, threads: int, repeats: int) -> dict:
    """Encoder seconds of fp32 and each precision called in turn in one process: on a shared, busy
    machine the per-round ratio is steadier than two runs minutes apart."""
    import copy

    import torch

    from fastsam3d import build_model
    from fastsam3d.runtime import apply_model_precision

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    base = apply_model_precision(build_model(name).to(device), "fp32", device)
    models = {"fp32": base}
    for precision in precisions:
        try:
            model = apply_model_precision(copy.deepcopy(base), precision, device)
        except ValueError:  # e.g. int8 on the convolutional default model
            continue
        if model.precision != "fp32":
            models[precision] = model
    crop = torch.randn(1, 1, *(base.img_size,) * 3, device=device)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    times: dict[str, list[float]] = {key: [] for key in models}
    with torch.inference_mode():
        for model in models.values():
            model.encode(crop)
        for _ in range(repeats):
            for key, model in models.items():
                started = time.perf_counter()
                model.encode(crop)
                sync()
                times[key].append(time.perf_counter() - started)
    result = {"model": name}
    for key, values in times.items():
        result[f"{models[key].precision}_min_s"] = min(values)
        result[f"{models[key].precision}_median_s"] = statistics.median(values)
        if key != "fp32":
            ratios = [a / b for a, b in zip(times["fp32"], values, strict=True)]
            result[f"{models[key].precision}_speedup_median"] = statistics.median(ratios)
    return result


def sdpa_backends(name: str, precisions: list[str], device: str, repeats: int) -> list[dict]:
    """Encoder seconds with attention restricted to each of PyTorch's SDPA kernels in turn. The
    official models add the relative-position term as a mask, which the flash kernel does not take:
    such a kernel is reported as refused, with PyTorch's reason."""
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from fastsam3d import build_model
    from fastsam3d.runtime import apply_model_precision

    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    rows = []
    for precision in precisions:
        torch.manual_seed(0)
        model = apply_model_precision(build_model(name).to(device), precision, device)
        crop = torch.randn(1, 1, *(model.img_size,) * 3, device=device)
        row = {"model": name, "precision": model.precision}
        for backend in ("FLASH_ATTENTION", "EFFICIENT_ATTENTION", "CUDNN_ATTENTION", "MATH"):
            try:
                with torch.inference_mode(), sdpa_kernel(getattr(SDPBackend, backend)), warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # the refusal's reasons come as warnings before the error
                    model.encode(crop)
                    sync()
                    row[f"{backend.lower()}_ms"] = 1e3 * _median_time(
                        lambda m=model, c=crop: (m.encode(c), sync()), repeats
                    )
            except RuntimeError as error:
                row[f"{backend.lower()}_ms"] = "refused: " + str(error).splitlines()[0][:60]
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["fastsam3d", "sam-med3d"])
    parser.add_argument(
        "--precisions",
        nargs="+",
        default=["fp32", "auto"],
        help="fp32, bf16, int8, onnx-fp32, onnx-int8 or auto (default: fp32 and auto, side by side)",
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--verify-padding", action="store_true")
    parser.add_argument(
        "--paired-repeats", type=int, default=8, help="rounds of the interleaved encoder timing (0: skip)"
    )
    parser.add_argument(
        "--input",
        choices=(".nii", ".nii.gz"),
        default=".nii",
        help="file format of the test volume the session reads (.nii is memory-mapped; default)",
    )
    parser.add_argument("--volume", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument(
        "--sdpa", action="store_true", help="also time the 3D SAM encoders with each SDPA attention kernel in turn"
    )
    parser.add_argument("--paired", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker and args.sdpa:
        print(json.dumps(sdpa_backends(args.worker, args.precisions, args.device, args.repeats)))
        return
    if args.worker and args.paired:
        print(json.dumps(paired_encoder(args.worker, args.precisions, args.device, args.threads, args.repeats)))
        return
    if args.worker:
        print(
            json.dumps(
                worker(
                    args.worker,
                    args.device,
                    args.threads,
                    args.repeats,
                    args.verify_padding,
                    args.precisions[0],
                    args.volume,
                )
            )
        )
        return
    with tempfile.TemporaryDirectory() as folder:
        args.volume = write_test_volume(Path(folder) / f"ct{args.input}")
        for name in args.models:
            write_checkpoint(name, Path(folder))
        rows = [row for name in args.models for precision in args.precisions if (row := _run(name, precision, args))]
    import platform

    import torch

    print(
        f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, {args.device}, {args.threads} threads, "
        f"torch {torch.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()}"
    )
    columns = [
        "model",
        "requested",
        "precision",
        "encoder_min_s",
        "encoder_s",
        "first_click_s",
        "warm_first_click_s",
        "click_ms",
        "decoder_ms",
        "paste_ms",
        "uncertainty16_ms",
        "peak_rss_clicks_mb",
        "peak_rss_mb",
        "time_v_max_rss_mb",
    ]
    extra = sorted({k for row in rows for k in row} - set(columns) - {"device", "threads"})
    _table(rows, columns + extra)
    speedups = []
    for row in rows:
        base = next((r for r in rows if r["model"] == row["model"] and r["precision"] == "fp32"), None)
        if base is None or row is base:
            continue
        speedups.append(
            {
                "model": row["model"],
                "precision": row["precision"],
                "encoder_min": base["encoder_min_s"] / row["encoder_min_s"],
                "encoder_median": base["encoder_s"] / row["encoder_s"],
                "first_click": base["first_click_s"] / row["first_click_s"],
                "cached_click": base["click_ms"] / row["click_ms"],
                "rss_mb_saved": base.get("time_v_max_rss_mb", base["peak_rss_mb"])
                - row.get("time_v_max_rss_mb", row["peak_rss_mb"]),
            }
        )
    if speedups:
        print("\nspeed-up over fp32 (x; > 1 is faster; separate processes, minutes apart)")
        _table(speedups, list(speedups[0]))
    plain = [p for p in args.precisions if "+" not in p]
    if args.sdpa:
        timed = []
        for name in [n for n in args.models if n != "default"]:
            command = [sys.executable, __file__, "--worker", name, "--sdpa", "--precisions", *plain]
            command += ["--device", args.device, "--threads", str(args.threads), "--repeats", str(args.repeats)]
            done = subprocess.run(command, capture_output=True, text=True, check=True)
            timed += json.loads(done.stdout.strip().splitlines()[-1])
        print("\nencoder ms per SDPA kernel (median; 'refused': the kernel does not take these inputs)")
        _table(timed, list(dict.fromkeys(k for row in timed for k in row)))
    fast = [p for p in plain if p != "fp32"]
    if fast and args.paired_repeats:
        paired = []
        for name in args.models:
            command = [
                sys.executable,
                __file__,
                "--worker",
                name,
                "--paired",
                "--precisions",
                *fast,
                "--device",
                args.device,
                "--threads",
                str(args.threads),
                "--repeats",
                str(args.paired_repeats),
            ]
            done = subprocess.run(command, capture_output=True, text=True, check=True)
            paired.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(
            f"\nencoder seconds, fp32 and the fast paths called in turn in one process ({args.paired_repeats} rounds; "
            "speed-up = median of the per-round ratios)"
        )
        _table(paired, list(dict.fromkeys(k for row in paired for k in row)))


def _table(rows: list[dict], header: list[str]) -> None:
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        cells = [row.get(c, "") for c in header]
        print("| " + " | ".join(f"{c:.3g}" if isinstance(c, float) else str(c) for c in cells) + " |")


if __name__ == "__main__":
    main()
