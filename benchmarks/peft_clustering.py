"""Fast 3D SAM measurements: trainable parameters per fine-tuning method, encoder MACs and CPU
latency with and without 3D token clustering.

    python benchmarks/peft_clustering.py                 # sam-med3d (ViT-B) PEFT table, student clustering
    python benchmarks/peft_clustering.py --device cuda

Random weights (counts and timings do not depend on them). MACs = FLOPs / 2 from
``torch.utils.flop_counter`` for one 128³ crop through the image encoder. The Fast 3D SAM code's
own setting is LoRA rank 96 on qkv/proj plus a 768->32->768 adapter per block ("lora96+adapter");
the paper's claim is <= 60 % of its trainable parameters and <= 50 % encoder MACs.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from fastsam3d.modeling.peft import apply_peft, parameter_counts
from fastsam3d.registry import build_model

SETTINGS = [  # (label, method, rank, adapter_dim, basis)
    ("full fine-tune", "none", 0, 0, 0),
    ("lora96+adapter (Fast 3D SAM code)", "lora+adapter", 96, 32, 0),
    ("lora r16", "lora", 16, 0, 0),
    ("adapter 32", "adapter", 0, 32, 0),
    ("hyper r16 (4 basis pairs)", "hyper", 16, 0, 4),
    ("hyper r16 + adapter 32", "hyper+adapter", 16, 32, 4),
]


def encoder_macs(model, crop) -> float:
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model.image_encoder(crop)
    return counter.get_total_flops() / 2


def encoder_seconds(model, crop, repeats: int, sync) -> float:
    with torch.inference_mode():
        model.image_encoder(crop)
        sync()
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            model.image_encoder(crop)
            sync()
            times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    crop = torch.randn(1, 1, 128, 128, 128, device=args.device)

    print("trainable parameters, sam-med3d (ViT-B teacher, 12 blocks):")
    baseline = None
    for label, method, rank, adapter_dim, basis in SETTINGS:
        model = apply_peft(
            build_model("sam-med3d"), method, rank=rank or 16, adapter_dim=adapter_dim or 32, basis=basis or 4
        )
        trainable, total = parameter_counts(model)
        encoder_trainable = sum(p.numel() for p in model.image_encoder.parameters() if p.requires_grad)
        baseline = encoder_trainable if method == "lora+adapter" else baseline
        share = (
            f"{100 * encoder_trainable / baseline:5.1f} % of lora96+adapter" if baseline and method != "none" else ""
        )
        print(
            f"  {label:36s} encoder {encoder_trainable / 1e6:7.2f} M, with prompt encoder + decoder "
            f"{trainable / 1e6:7.2f} M trainable of {total / 1e6:7.2f} M  {share}"
        )

    print(f"encoder of one 128³ crop, {args.device} ({args.threads} threads):")
    for name in ("fastsam3d", "compact"):
        model = build_model(name).to(args.device).eval()
        encoder = model.image_encoder
        first_attention = next(i for i, b in enumerate(encoder.blocks) if b.with_attention)
        rows = [("no clustering", None, 1)]
        rows += [
            (f"clustering after block {k}, cell 2 (m = N/8)", k, 2)
            for k in (first_attention - 1, first_attention)
            if 0 <= k < len(encoder.blocks) - 1
        ]
        reference = None
        for label, after, cell in rows:
            encoder.enable_token_clustering(after, cell=cell)
            macs = encoder_macs(model, crop)
            seconds = encoder_seconds(model, crop, args.repeats, sync)
            with torch.no_grad():
                output = model.image_encoder(crop)
            reference = output if reference is None else reference
            change = (output - reference).norm() / reference.norm()
            print(
                f"  {name:10s} {label:40s} {macs / 1e9:7.2f} GMAC  {seconds * 1e3:7.0f} ms  "
                f"embedding change (random weights) {change:.3f}"
            )
        encoder.enable_token_clustering(None)


if __name__ == "__main__":
    main()
