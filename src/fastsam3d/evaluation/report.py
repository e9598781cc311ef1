"""The evaluation report: ``results.csv``, ``summary.json``, plots and ``report.md``.

``results.csv`` has one row per model x case x structure x step (:data:`COLUMNS`):
``dice`` / ``nsd`` (normalised surface Dice at the run's tolerance, mm) / ``hd95`` (mm, when
asked for) after the step's prompts; ``encoder_ms`` (0 when the embedding was cached),
``decoder_ms`` (prompt encoder + decoder), ``total_ms`` (the whole step with paste-back);
``peak_rss_mb`` / ``peak_gpu_mb`` the process peaks so far; ``status`` ``ok``, ``absent`` (a
requested structure missing from the case) or ``failed`` (with ``error``).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..io import atomic_output
from .harness import COLUMNS, settings_dict, write_rows
from .metrics import area_under_curve

__all__ = ["COLUMNS", "summarise", "write_report"]


def _number(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def summarise(rows: list[dict]) -> dict:
    """Per model: Dice/NSD per step (mean over structures), AUC, timings, memory, failures."""
    summary: dict[str, dict] = {}
    for model in dict.fromkeys(r["model"] for r in rows):
        mine = [r for r in rows if r["model"] == model]
        ok = [r for r in mine if r["status"] == "ok"]
        curves: dict[tuple, list[tuple[int, dict]]] = {}
        for r in ok:
            curves.setdefault((r["case"], r["class_id"]), []).append((int(r["step"]), r))
        steps = max((int(r["step"]) for r in ok), default=0)
        per_step = {
            m: [
                float(np.nanmean([_number(r[m]) for r in ok if int(r["step"]) == s] or [np.nan]))
                for s in range(1, steps + 1)
            ]
            for m in ("dice", "nsd")
        }
        aucs = [
            area_under_curve([_number(r["dice"]) for _, r in sorted(c, key=lambda x: x[0])]) for c in curves.values()
        ]
        first = [r for r in ok if int(r["step"]) == 1]
        later = [r for r in ok if int(r["step"]) > 1 and _number(r["total_ms"]) > 0]
        summary[model] = {
            "structures": len(curves),
            "failed": sum(r["status"] == "failed" for r in mine),
            "absent": sum(r["status"] == "absent" for r in mine),
            "dice_per_step": per_step["dice"],
            "nsd_per_step": per_step["nsd"],
            "dice_auc": float(np.nanmean(aucs)) if aucs else float("nan"),
            "first_step_ms": _mean(first, "total_ms"),
            "first_step_encoder_ms": _mean(first, "encoder_ms"),
            "later_step_ms": _mean(later, "total_ms"),
            "later_step_decoder_ms": _mean(later, "decoder_ms"),
            "clicks_honoured": _mean([r for r in ok if r.get("clicks_honoured", "") != ""], "clicks_honoured"),
            "peak_rss_mb": max((_number(r["peak_rss_mb"]) for r in ok), default=float("nan")),
        }
    return summary


def _mean(rows: list[dict], column: str) -> float:
    values = [_number(r[column]) for r in rows]
    return float(np.nanmean(values)) if values else float("nan")


def write_report(rows: list[dict], out: Path, settings) -> dict:
    """Write every report file into ``out``; returns the summary."""
    out.mkdir(parents=True, exist_ok=True)
    write_rows(rows, out / "results.csv")
    summary = summarise(rows)
    document = {"settings": settings_dict(settings), "models": summary}
    _atomic_text(out / "summary.json", json.dumps(document, indent=1, allow_nan=True))
    _plot(summary, out, settings.protocol)
    _atomic_text(out / "report.md", _markdown(summary, rows, settings))
    return summary


def _atomic_text(path: Path, text: str) -> None:
    with atomic_output(path) as temp:
        temp.write_text(text)


def _plot(summary: dict, out: Path, protocol: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    figure, axis = plt.subplots(figsize=(6, 4), dpi=120)
    for model, values in summary.items():
        curve = values["dice_per_step"]
        axis.plot(range(1, len(curve) + 1), curve, marker="o", label=model)
    axis.set(xlabel="interaction step", ylabel="mean Dice", ylim=(0, 1), title=f"Dice per step ({protocol})")
    axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    figure.savefig(out / "dice_per_click.png")
    plt.close(figure)

    figure, axis = plt.subplots(figsize=(6, 4), dpi=120)
    models = list(summary)
    x = np.arange(len(models))
    first = [summary[m]["first_step_ms"] for m in models]
    later = [summary[m]["later_step_ms"] for m in models]
    axis.bar(x - 0.2, first, 0.4, label="first step (with encoder)")
    axis.bar(x + 0.2, later, 0.4, label="later steps (cached)")
    axis.set_xticks(x, models, rotation=20, ha="right")
    axis.set(ylabel="ms per step", title="time per interaction step")
    if all(np.isfinite(v) and v > 0 for v in first + later):
        axis.set_yscale("log")
    axis.legend()
    figure.tight_layout()
    figure.savefig(out / "time_per_click.png")
    plt.close(figure)


def _markdown(summary: dict, rows: list[dict], settings) -> str:
    steps = settings.step_count
    header = "| model | structures | " + " | ".join(f"Dice@{s}" for s in range(1, steps + 1))
    header += " | Dice AUC | NSD@last | clicks honoured | first step ms | later step ms | peak RSS MB | failed |"
    lines = [
        f"# Interactive evaluation: protocol `{settings.protocol}`",
        "",
        f"{steps} steps per structure, seed {settings.seed}, NSD tolerance {settings.nsd_tolerance} mm. "
        "Dice and NSD are means over structures; times are means per step (the first step includes "
        "the image encoder, later steps reuse the cached embedding). Clicks honoured: the share of "
        "clicks whose voxel ends on the clicked side (inside for include, outside for exclude). Rows: `results.csv`.",
        "",
        header,
        "|" + "---|" * (header.count("|") - 1),
    ]
    for model, s in summary.items():
        dice = " | ".join(f"{v:.3f}" for v in s["dice_per_step"]) or "-"
        nsd = s["nsd_per_step"][-1] if s["nsd_per_step"] else float("nan")
        lines.append(
            f"| {model} | {s['structures']} | {dice} | {s['dice_auc']:.3f} | {nsd:.3f} | {100 * s['clicks_honoured']:.1f} % | "
            f"{s['first_step_ms']:.0f} | {s['later_step_ms']:.0f} | {s['peak_rss_mb']:.0f} | {s['failed']} |"
        )
    lines += ["", "![Dice per step](dice_per_click.png)", "", "![time per step](time_per_click.png)", ""]
    problems = [r for r in rows if r["status"] in ("failed", "absent")]
    if problems:
        lines += ["## Skipped and failed", ""]
        lines += [
            f"- {r['model']} / {r['case']} / {r['structure'] or '-'}: {r['status']} ({r['error']})" for r in problems
        ]
        lines.append("")
    return "\n".join(lines)
