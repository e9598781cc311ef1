"""``fastsam3d precision``: what ``--precision auto`` runs each model in on this machine and why;
``--measure`` measures again."""

from __future__ import annotations

import argparse


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "precision",
        help="show what --precision auto chose on this CPU for each model measured, or --measure again",
        description="On a CPU, --precision auto measures once per machine and model which precision gives the "
        "fastest first click among those that keep the masks, and remembers it (docs/models.md#precision). "
        "Without MODEL this lists what was measured here; with MODEL and --measure it measures again now.",
    )
    parser.add_argument("models", nargs="*", metavar="MODEL", help="model names or checkpoint files")
    parser.add_argument("--checkpoint", help="weights for a named model")
    parser.add_argument("--measure", action="store_true", help="measure MODEL again now (a few seconds to tens)")
    parser.add_argument("--threads", type=int, help="torch threads to measure with (default: torch's)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from .. import tuning
    from ..errors import FastSAM3DError
    from ..registry import load_model

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.measure and not args.models:
        raise FastSAM3DError("--measure needs the MODEL(s) to measure, e.g. fastsam3d precision default --measure")
    machine = tuning.machine_description()
    print(f"this machine: {machine['cpu']} ({', '.join(machine['isa']) or 'no AVX2'}), {machine['threads']} threads")
    print(f"remembered in {tuning.tuning_file()}")
    stored = tuning.remembered(machine)
    if not args.models:
        if not stored:
            print("nothing measured here yet: a model loaded with --precision auto on the CPU is measured then")
        for measurement in stored.values():
            print(f"  {measurement.reason()}")
        return 0
    for name in args.models:
        model = load_model(name, args.checkpoint, device="cpu")
        options = tuning.candidates(model, "cpu")
        if len(options) < 2:
            print(f"  {name}: {', '.join(options) or 'fp32'} only, nothing to measure (auto: its rule)")
            continue
        found = tuning.measured_precision(model, "cpu", again=True) if args.measure else None
        found = found or stored.get(tuning.architecture_key(model))
        if found is None:
            print(f"  {name}: not measured here yet (candidates {', '.join(options)}); add --measure")
        else:
            print(f"  {found.reason()}")
    return 0
