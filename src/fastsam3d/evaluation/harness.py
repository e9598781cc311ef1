"""Run simulated interactive sessions over cases and collect one row per case x structure x step.

Every model sees the same protocol with the same random stream per (seed, case, structure), so
prompts that do not depend on the prediction (the first click, boxes, ``random``) are identical
across models. Cases run in worker processes (``workers``); under ``torchrun`` each rank takes
every ``WORLD_SIZE``-th case, writes its own shard, and rank 0 merges them into the report.
"""

from __future__ import annotations

import csv
import os
import resource
import time
import zlib
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import torch

from ..engine.roi import canonical_axes
from ..errors import PromptError
from ..io import atomic_output
from .datasets import Case
from .metrics import DEFAULT_NSD_TOLERANCE_MM, segmentation_metrics
from .protocols import NO_BOX_PATTERNS, Prompt, get_protocol
from .segmenters import Segmenter, build_segmenter

COLUMNS = (
    "model",
    "protocol",
    "case",
    "class_id",
    "structure",
    "step",
    "prompt",
    "dice",
    "nsd",
    "hd95",
    "encoder_ms",
    "decoder_ms",
    "total_ms",
    "clicks_honoured",
    "peak_rss_mb",
    "peak_gpu_mb",
    "status",
    "error",
)


@dataclass
class EvaluationSettings:
    """What to run on every case (picklable, sent to worker processes)."""

    models: list[str]
    protocol: str = "center"
    steps: int | None = None
    seed: int = 2023
    nsd_tolerance: float = DEFAULT_NSD_TOLERANCE_MM
    hd95: bool = False
    min_voxels: int = 10
    device: str | None = None
    requested: set[str] = field(default_factory=set)  # classes asked for by name/id: report when absent
    no_box: tuple[str, ...] | None = None  # challenge protocol: name patterns without a box (None: vessels)

    @property
    def step_count(self) -> int:
        return self.steps or get_protocol(self.protocol).default_steps


def evaluate_case(case: Case, segmenters: list[Segmenter], settings: EvaluationSettings) -> list[dict]:
    """All rows of one case; a failure becomes a ``failed`` row and never stops the run."""
    rows: list[dict] = []
    base = {"protocol": settings.protocol, "case": case.name}
    try:
        image, label = case.load()
        present = {int(v): int(n) for v, n in zip(*np.unique(label.array, return_counts=True), strict=True)}
    except Exception as error:  # noqa: BLE001 - any unreadable case is recorded, the run goes on
        return [_row(base, model=s.name, status="failed", error=_describe(error)) for s in segmenters]
    for segmenter in segmenters:
        try:
            segmenter.set_image(image)
        except Exception as error:  # noqa: BLE001
            rows.append(_row(base, model=segmenter.name, status="failed", error=_describe(error)))
            continue
        for class_id, structure in sorted(case.classes.items()):
            entry = dict(base, model=segmenter.name, class_id=class_id, structure=structure)
            if present.get(class_id, 0) < settings.min_voxels:
                if structure in settings.requested or str(class_id) in settings.requested:
                    rows.append(_row(entry, status="absent", error=f"{present.get(class_id, 0)} voxels"))
                continue
            try:
                rows.extend(
                    _interact(segmenter, label.array == class_id, image.spacing, entry, settings, case, image.direction)
                )
            except Exception as error:  # noqa: BLE001
                rows.append(_row(entry, status="failed", error=_describe(error)))
    return rows


def _interact(
    segmenter: Segmenter,
    target: np.ndarray,
    spacing,
    entry: dict,
    settings: EvaluationSettings,
    case: Case,
    direction: np.ndarray | None = None,
) -> list[dict]:
    protocol = get_protocol(settings.protocol)
    rng = np.random.default_rng([settings.seed, zlib.crc32(case.name.encode()), int(entry["class_id"])])
    slice_axis = 2 if direction is None else canonical_axes(np.asarray(direction))[0][2]  # closest to S-I
    protocol.start(entry["structure"], slice_axis, settings.no_box)
    centre = None
    if protocol.label_centred_roi:
        where = np.argwhere(target)
        centre = np.round((where.min(0) + where.max(0)) / 2.0)
    segmenter.begin(protocol, centre)
    prediction = np.zeros_like(target)
    rows, metrics = [], None
    for step in range(1, settings.step_count + 1):
        prompts = protocol.prompts(step, prediction, target, spacing, rng, segmenter.region())
        text, note = _prompt_text(prompts), ""
        if prompts:
            started = time.perf_counter()
            try:
                prediction, timing = segmenter.apply(prompts)
            except PromptError as error:
                if not protocol.challenge:
                    raise
                # the challenge scores a run without output as before (the previous output, else empty)
                timing, note = None, f"prompt not applied, previous prediction kept: {_describe(error)}"
            elapsed = time.perf_counter() - started
            metrics = segmentation_metrics(
                prediction, target, spacing, settings.nsd_tolerance, settings.hd95, surfels=protocol.challenge
            )
            times = {
                "encoder_ms": 1e3 * timing.encoder if timing else 0.0,
                "decoder_ms": 1e3 * timing.decoder if timing else 0.0,
                "total_ms": 1e3 * elapsed,
                "clicks_honoured": clicks_honoured(prompts, prediction),
            }
        elif metrics is None:
            if not (protocol.challenge and step == 1):
                raise RuntimeError("the protocol gave no prompt for the first step")
            # the challenge's step without a box (vessel-like): Dice = NSD = 0, time 0, empty prediction
            metrics = {"dice": 0.0, "nsd": 0.0} | ({"hd95": float("nan")} if settings.hd95 else {})
            times = {"encoder_ms": 0.0, "decoder_ms": 0.0, "total_ms": 0.0}
            text = "none (no box for this structure: vessel-like / --no-box)"
        else:
            times = {"encoder_ms": 0.0, "decoder_ms": 0.0, "total_ms": 0.0}  # nothing left to correct
        rows.append(_row(entry, step=step, prompt=text, **metrics, **times, **_memory(), status="ok", error=note))
    return rows


def clicks_honoured(prompts: list[Prompt], prediction: np.ndarray) -> float:
    """Share of the step's clicks whose voxel has the clicked side: inside the mask for an include
    click, outside for an exclude click (NaN for a step without clicks)."""
    clicks = [p for p in prompts if p.point is not None]
    if not clicks:
        return float("nan")
    return float(np.mean([bool(prediction[tuple(int(v) for v in p.point)]) == p.positive for p in clicks]))


def _prompt_text(prompts: list[Prompt]) -> str:
    if not prompts:
        return "none (no error left)"
    parts = []
    for p in prompts:
        if p.stroke is not None:
            parts.append(f"{'+' if p.positive else '-'}{p.stroke} of {len(p.vertices)} points")
        elif p.box is not None:
            parts.append("box " + "-".join(",".join(map(str, corner)) for corner in p.box))
            if p.box_slice is not None:
                parts.append(f"(middle slice {p.box_slice[1]} across axis {p.box_slice[0]})")
        else:
            parts.append(("+" if p.positive else "-") + ",".join(map(str, p.point)))
    return " ".join(parts)


def _memory() -> dict[str, float]:
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    gpu = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else float("nan")
    return {"peak_rss_mb": peak_kb / 1024, "peak_gpu_mb": gpu}


def _row(entry: dict, **values) -> dict:
    row = {column: "" for column in COLUMNS}
    row.update(entry)
    row.update(values)
    return row


def _describe(error: BaseException) -> str:
    text = f"{type(error).__name__}: {error}".replace("\n", " ")
    return text[:500]


# --- running many cases ------------------------------------------------------------------

_WORKER_SEGMENTERS: list[Segmenter] = []


def _init_worker(settings: EvaluationSettings, threads: int) -> None:
    torch.set_num_threads(threads)
    _WORKER_SEGMENTERS[:] = [build_segmenter(m, settings.device) for m in settings.models]


def _worker_case(case: Case, settings: EvaluationSettings) -> list[dict]:
    return evaluate_case(case, _WORKER_SEGMENTERS, settings)


def run_cases(
    cases: list[Case],
    settings: EvaluationSettings,
    workers: int = 1,
    progress: bool = True,
    segmenters: list[Segmenter] | None = None,
) -> list[dict]:
    """Evaluate ``cases`` (in ``workers`` processes when > 1); rows in case order."""
    from tqdm import tqdm

    bar = tqdm(total=len(cases), desc="cases", unit="case", disable=not progress)
    results: dict[int, list[dict]] = {}
    if workers <= 1 or len(cases) <= 1:
        segmenters = segmenters or [build_segmenter(m, settings.device) for m in settings.models]
        for index, case in enumerate(cases):
            results[index] = evaluate_case(case, segmenters, settings)
            bar.update()
    else:
        threads = max(1, (os.cpu_count() or 1) // workers)
        with ProcessPoolExecutor(
            workers, mp_context=get_context("spawn"), initializer=_init_worker, initargs=(settings, threads)
        ) as pool:
            futures = {pool.submit(_worker_case, case, settings): index for index, case in enumerate(cases)}
            for future in as_completed(futures):
                index = futures[future]
                try:
                    results[index] = future.result()
                except Exception as error:  # noqa: BLE001 - a worker that died: record the case as failed
                    results[index] = [
                        _row(
                            {"protocol": settings.protocol, "case": cases[index].name},
                            model=m,
                            status="failed",
                            error=_describe(error),
                        )
                        for m in settings.models
                    ]
                bar.update()
    bar.close()
    return [row for index in sorted(results) for row in results[index]]


def distributed_rank() -> tuple[int, int]:
    """(rank, world size) under torchrun, else (0, 1)."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def shard(cases: list[Case], rank: int, world: int) -> list[Case]:
    """The cases rank ``rank`` of ``world`` evaluates: every ``world``-th one."""
    return cases[rank::world]


def write_rows(rows: list[dict], path: Path) -> Path:
    """CSV with :data:`COLUMNS`, written atomically."""
    with atomic_output(path) as temp, open(temp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _format(v) for k, v in row.items()})
    return path


def read_rows(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def _format(value) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def settings_dict(settings: EvaluationSettings) -> dict:
    values = asdict(settings)
    values["requested"] = sorted(values["requested"])
    values["steps"] = settings.step_count
    if get_protocol(settings.protocol).challenge:
        values["no_box"] = list(NO_BOX_PATTERNS if settings.no_box is None else settings.no_box)
    else:
        values.pop("no_box")
    return values
