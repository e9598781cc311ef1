"""``fastsam3d evaluate``: load cases, run the harness (workers or torchrun ranks), write the report.

    python -m torch.distributed.run --nproc_per_node 4 -m fastsam3d.cli evaluate --data DIR ...

shards the cases over the ranks (one GPU each when there are GPUs); every rank writes
``shards/results.rank<r>.csv`` and rank 0 merges them into the report once all are done.
"""

from __future__ import annotations

import logging
import os
from datetime import timedelta
from pathlib import Path

import torch

from ..errors import FastSAM3DError
from .datasets import load_cases
from .harness import EvaluationSettings, distributed_rank, read_rows, run_cases, shard, write_rows
from .metrics import CHALLENGE_NSD_TOLERANCE_MM
from .protocols import PROTOCOLS
from .report import write_report

log = logging.getLogger(__name__)


def evaluate(
    data: str | Path,
    models: list[str],
    out: str | Path,
    protocol: str = "center",
    steps: int | None = None,
    classes: list[str] | None = None,
    workers: int = 1,
    case_names: list[str] | None = None,
    seed: int = 2023,
    nsd_tolerance: float = 2.0,
    hd95: bool = False,
    device: str | None = None,
    progress: bool = True,
    no_box: list[str] | None = None,
) -> tuple[dict, int]:
    """Evaluate ``models`` on the cases in ``data``; returns (summary, number of failed rows).

    ``no_box``: for the challenge protocol (``box+5`` / ``cvpr25``), the regular expressions of the
    structure names that get no box (default: vessels, :data:`~.protocols.NO_BOX_PATTERNS`).
    Under torchrun only rank 0 returns the merged summary; other ranks return ({}, their failures).
    """
    if protocol not in PROTOCOLS:
        raise FastSAM3DError(f"unknown protocol {protocol!r}; choose from {', '.join(PROTOCOLS)}")
    if steps is not None and steps < 1:
        raise FastSAM3DError("--clicks must be at least 1")
    if not models:
        raise FastSAM3DError("name at least one model")
    if PROTOCOLS[protocol].challenge and nsd_tolerance != CHALLENGE_NSD_TOLERANCE_MM:
        log.warning(f"NSD at {nsd_tolerance} mm: the CVPR 2025 challenge scores NSD at {CHALLENGE_NSD_TOLERANCE_MM} mm")
    if no_box is not None:
        import re

        for pattern in no_box:
            try:
                re.compile(pattern)
            except re.error as error:
                raise FastSAM3DError(f"--no-box pattern {pattern!r} is not a regular expression: {error}") from None
    out = Path(out)
    cases = load_cases(data, classes)
    if case_names:
        unknown = set(case_names) - {c.name for c in cases}
        if unknown:
            raise FastSAM3DError(f"no case {sorted(unknown)} in {data}; cases: {', '.join(c.name for c in cases)}")
        cases = [c for c in cases if c.name in case_names]
    settings = EvaluationSettings(
        models=list(models),
        protocol=protocol,
        steps=steps,
        seed=seed,
        nsd_tolerance=nsd_tolerance,
        hd95=hd95,
        device=device,
        requested=set(classes or ()),
        no_box=None if no_box is None else tuple(no_box),
    )
    rank, world = distributed_rank()
    if world == 1:
        rows = run_cases(cases, settings, workers=workers, progress=progress)
        summary = write_report(rows, out, settings)
        return summary, sum(r["status"] == "failed" for r in rows)

    if settings.device is None and torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", rank))
        settings.device = f"cuda:{local % torch.cuda.device_count()}"
    rows = run_cases(shard(cases, rank, world), settings, workers=workers, progress=progress and rank == 0)
    shards = out / "shards"
    write_rows(rows, shards / f"results.rank{rank}.csv")
    torch.distributed.init_process_group("gloo", timeout=timedelta(hours=6))
    try:
        torch.distributed.barrier()
        if rank != 0:
            return {}, sum(r["status"] == "failed" for r in rows)
        merged = [row for r in range(world) for row in read_rows(shards / f"results.rank{r}.csv")]
        order = {case.name: index for index, case in enumerate(cases)}
        merged.sort(key=lambda row: order.get(row["case"], len(order)))
        summary = write_report(merged, out, settings)
        return summary, sum(r["status"] == "failed" for r in merged)
    finally:
        torch.distributed.destroy_process_group()
