"""What ``auto`` would choose on this machine: each candidate precision's first click on the probe
(fastsam3d.tuning), measured afresh and printed, without touching the remembered choices.

    python benchmarks/auto_precision.py                          # default and LiteMedSAM (shipped weights)
    python benchmarks/auto_precision.py --random fastsam3d sam-med3d   # official architectures, random weights

Prints the CPU it ran on, then per model the choice, every candidate's median first click and
why any was dropped.
"""

from __future__ import annotations

import argparse
import json

import torch

from fastsam3d import build_model, tuning
from fastsam3d.registry import load_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="*", default=["default", "litemedsam"], help="models with weights here")
    parser.add_argument("--random", nargs="*", default=[], help="architectures measured with random weights")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(json.dumps(tuning.machine_description()))
    models = [(name, lambda n=name: load_model(n)) for name in args.models]
    models += [(f"{name} (random weights)", lambda n=name: build_model(n)) for name in args.random]
    for label, build in models:
        model = build()
        options = tuning.candidates(model, "cpu")
        if len(options) < 2:
            print(f"{label}: one candidate ({', '.join(options) or 'none'}), nothing to measure")
            continue
        found = tuning.measure(model, options)
        print(f"{label}: {found.reason()}")


if __name__ == "__main__":
    main()
