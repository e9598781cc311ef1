"""Training throughput of the default model's recipe: crops synthesised per second in one process,
and training samples per second on a device with loader workers (``fastsam3d train-default``'s loop).

    python benchmarks/train_throughput.py [--device cpu|cuda] [--batch-size 2] [--workers 1] [--steps 20]

Run it on the CPU and on a GPU side by side (benchmarks/train_default_gpu.sh does both): the
recipe is meant to keep a GPU busy (issue: GPU >= 20x the 2-core CPU in samples per second).
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch

from fastsam3d.data.brains import brain_manifest
from fastsam3d.data.devdata import dev_manifest
from fastsam3d.data.streams import sample_rng
from fastsam3d.registry import build_model
from fastsam3d.training.click_training import ClickTrainSettings, crop_loader, interactive_loss
from fastsam3d.training.recipe import library_source


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--steps", type=int, default=20, help="timed steps (after 3 warm-up steps)")
    args = parser.parse_args()
    if dev_manifest() is None or brain_manifest() is None:
        raise SystemExit("training data not fetched: run `fastsam3d data fetch`")
    source = library_source(dev_manifest(), brain_manifest())
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{os.cpu_count()} CPU cores"
    print(f"device {args.device} ({name}), torch {torch.__version__}, {torch.get_num_threads()} threads")

    for index in range(3):  # warm the atlases' voxel caches
        source.draw(sample_rng(0, index))
    started, count = time.perf_counter(), 20
    for index in range(count):
        source.draw(sample_rng(1, index))
    synthesis = count / (time.perf_counter() - started)
    print(f"synthesis, one process: {synthesis:.1f} crops/s")

    settings = ClickTrainSettings(batch_size=args.batch_size, workers=args.workers)
    model = build_model("click-unet").to(device).train()
    optimiser = torch.optim.AdamW(model.parameters(), lr=1e-3)
    batches = iter(crop_loader(source, settings, 0))
    for step in range(3 + args.steps):
        if step == 3:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            started = time.perf_counter()
        images, targets = (t.to(device, non_blocking=True) for t in next(batches))
        loss, _ = interactive_loss(model, images, targets, settings, np.random.default_rng(step))
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - started
    rate = args.steps * args.batch_size / seconds
    print(
        f"training, batch {args.batch_size}, {args.workers} loader workers: {seconds / args.steps:.2f} s/step, "
        f"{rate:.1f} samples/s"
    )


if __name__ == "__main__":
    main()
