"""The evaluation report: ``results.csv``, ``summary.json``, plots and ``report.md``.

``results.csv`` has one row per model x case x structure x step (:data:`COLUMNS`):
``dice`` / ``nsd`` (normalised surface Dice at the run's tolerance, mm) / ``hd95`` (mm, when
asked for) after the step's prompts; ``encoder_ms`` (0 when the embedding was cached),
``decoder_ms`` (prompt encoder + decoder), ``total_ms`` (the whole step with paste-back);
``peak_rss_mb`` / ``peak_gpu_mb`` the process peaks so far; ``status`` ``ok``, ``absent`` (a
requested structure missing from the case) or ``failed`` (with ``error``).

``summary.csv`` has one row per model (the ``summary.json`` numbers, per-step lists as columns,
``time_<s>_ms`` the mean time of step ``s`` over the structures where a prompt was applied).
The challenge protocol (``box+5`` / ``cvpr25``) adds the CVPR 2025 challenge's metrics, computed
as ``CVPR25_iter_eval.py`` does per image: per case and step, Dice = mean over its structures,
NSD = mean over its structures when that Dice > 0.2 else 0; ``DSC_AUC`` / ``NSD_AUC`` =
:func:`~.metrics.challenge_auc` of the click steps; ``DSC_Final`` / ``NSD_Final`` after the last
step; ``RunningTime_<s>`` = seconds of step ``s`` summed over the case's structures. They are in
``challenge_metrics.csv`` (one row per model x case, the challenge's column names), averaged over
cases in ``summary.csv`` / ``summary.json`` (``challenge``) and in ``report.md``.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from ..io import atomic_output
from .harness import COLUMNS, settings_dict, write_rows
from .metrics import CHALLENGE_SECONDS_PER_CLASS, area_under_curve, challenge_auc, challenge_nsd
from .protocols import PROTOCOLS

__all__ = ["COLUMNS", "challenge_cases", "summarise", "write_report"]


def _number(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def _is_challenge(rows: list[dict]) -> bool:
    name = next((r["protocol"] for r in rows if r.get("protocol")), "")
    return name in PROTOCOLS and PROTOCOLS[name].challenge


def summarise(rows: list[dict]) -> dict:
    """Per model: Dice/NSD per step (mean over structures), AUC, timings, memory, failures; and the
    challenge's metrics (``challenge``) for the challenge protocol (module docstring)."""
    summary: dict[str, dict] = {}
    challenge = _is_challenge(rows)
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
            "time_per_step_ms": [
                _mean([r for r in ok if int(r["step"]) == s and _number(r["total_ms"]) > 0], "total_ms")
                for s in range(1, steps + 1)
            ],
        }
        if challenge:
            summary[model]["challenge"] = _challenge_summary(challenge_cases(ok), ok, steps)
    return summary


def challenge_cases(rows: list[dict]) -> list[dict]:
    """One record per model x case with the columns of ``CVPR25_iter_eval.py``'s metrics CSV,
    from the ``ok`` rows of a challenge-protocol run (module docstring)."""
    records = []
    for model in dict.fromkeys(r["model"] for r in rows):
        mine = [r for r in rows if r["model"] == model and r["status"] == "ok"]
        for case in dict.fromkeys(r["case"] for r in mine):
            here = [r for r in mine if r["case"] == case]
            steps = max(int(r["step"]) for r in here)
            at = [[r for r in here if int(r["step"]) == s] for s in range(1, steps + 1)]
            dsc = [float(np.mean([_number(r["dice"]) for r in step])) for step in at]
            nsd = [
                challenge_nsd(d, float(np.mean([_number(r["nsd"]) for r in step])))
                for d, step in zip(dsc, at, strict=True)
            ]
            seconds = [sum(_number(r["total_ms"]) for r in step) / 1e3 for step in at]
            classes = len({r["class_id"] for r in here})
            record = {"model": model, "CaseName": case, "TotalRunningTime": sum(seconds)}
            record |= {f"RunningTime_{s}": v for s, v in enumerate(seconds, 1)}
            record |= {
                "DSC_AUC": challenge_auc(dsc, steps - 1),
                "NSD_AUC": challenge_auc(nsd, steps - 1),
                "DSC_Final": dsc[-1],
                "NSD_Final": nsd[-1],
            }
            record |= {f"DSC_{s}": v for s, v in enumerate(dsc, 1)}
            record |= {f"NSD_{s}": v for s, v in enumerate(nsd, 1)}
            record |= {"num_class": classes, "runtime_upperbound": CHALLENGE_SECONDS_PER_CLASS * classes}
            records.append(record)
    return records


def _challenge_summary(cases: list[dict], ok: list[dict], steps: int) -> dict:
    def mean(key: str) -> float:
        values = [_number(c[key]) for c in cases]
        return float(np.nanmean(values)) if values else float("nan")

    return {
        "cases": len(cases),
        "dsc_auc": mean("DSC_AUC"),
        "nsd_auc": mean("NSD_AUC"),
        "dsc_final": mean("DSC_Final"),
        "nsd_final": mean("NSD_Final"),
        "dsc_per_step": [mean(f"DSC_{s}") for s in range(1, steps + 1)],
        "nsd_per_step": [mean(f"NSD_{s}") for s in range(1, steps + 1)],
        "running_time_per_step_s": [mean(f"RunningTime_{s}") for s in range(1, steps + 1)],
        "running_time_s": mean("TotalRunningTime"),
        "over_time_limit": sum(c["TotalRunningTime"] > c["runtime_upperbound"] for c in cases),
        "no_box_structures": sum(int(r["step"]) == 1 and r["prompt"].startswith("none (no box") for r in ok),
    }


def summary_table(summary: dict) -> list[dict]:
    """``summary.csv``: one flat row per model (per-step lists become numbered columns)."""
    table = []
    for model, values in summary.items():
        row = {"model": model}
        for key, value in values.items():
            if key == "challenge":
                for name, entry in value.items():
                    _flatten(row, f"challenge_{name}", entry)
            else:
                _flatten(row, key, value)
        table.append(row)
    return table


def _flatten(row: dict, key: str, value) -> None:
    if isinstance(value, list):
        stem, _, unit = key.rpartition("_per_step")
        for index, item in enumerate(value, 1):
            row[f"{stem}_{index}{unit}"] = item
    else:
        row[key] = value


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
    _write_csv(out / "summary.csv", summary_table(summary))
    if _is_challenge(rows):
        _write_csv(out / "challenge_metrics.csv", challenge_cases(rows))
    _plot(summary, out, settings.protocol)
    _atomic_text(out / "report.md", _markdown(summary, rows, settings))
    return summary


def _atomic_text(path: Path, text: str) -> None:
    with atomic_output(path) as temp:
        temp.write_text(text)


def _write_csv(path: Path, records: list[dict]) -> None:
    columns = list(dict.fromkeys(key for record in records for key in record))
    with atomic_output(path) as temp, open(temp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        for record in records:
            writer.writerow({k: f"{v:.6g}" if isinstance(v, float) else v for k, v in record.items()})


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
    if any("challenge" in s for s in summary.values()):
        lines += _challenge_markdown(summary, steps)
    lines += ["", "![Dice per step](dice_per_click.png)", "", "![time per step](time_per_click.png)", ""]
    problems = [r for r in rows if r["status"] in ("failed", "absent")]
    if problems:
        lines += ["## Skipped and failed", ""]
        lines += [
            f"- {r['model']} / {r['case']} / {r['structure'] or '-'}: {r['status']} ({r['error']})" for r in problems
        ]
        lines.append("")
    return "\n".join(lines)


def _challenge_markdown(summary: dict, steps: int) -> list[str]:
    clicks = steps - 1
    lines = [
        "",
        "## CVPR 2025 challenge metrics",
        "",
        "As `CVPR25_iter_eval.py` computes them (github.com/JunMa11/CVPR-MedSegFMCompetition), per case "
        "then averaged over cases: DSC and NSD per step are means over the case's structures (NSD at the "
        "tolerance above with surface-area weighting, set to 0 when the case's DSC is at most 0.2); "
        f"DSC_AUC and NSD_AUC are trapezoidal areas over the {clicks} click steps at x = 0..{clicks - 1} "
        f"(the box step is left out; at most {max(clicks - 1, 0)}); finals after step {steps}. Vessel-like "
        "structures get no box: their step 1 scores 0. Times: seconds per step summed over a case's "
        "structures (the challenge runs all classes at once, within 90 s per class for the whole case), "
        "and ms per step per structure. Per case: `challenge_metrics.csv`.",
        "",
    ]
    header = "| model | cases | no-box structures | DSC_AUC | NSD_AUC | DSC final | NSD final | "
    header += " | ".join(f"DSC@{s}" for s in range(1, steps + 1)) + " | "
    header += " | ".join(f"NSD@{s}" for s in range(1, steps + 1)) + " |"
    lines += [header, "|" + "---|" * (header.count("|") - 1)]
    for model, values in summary.items():
        c = values.get("challenge")
        if c is None:
            continue
        lines.append(
            f"| {model} | {c['cases']} | {c['no_box_structures']} | {c['dsc_auc']:.3f} | {c['nsd_auc']:.3f} | "
            f"{c['dsc_final']:.3f} | {c['nsd_final']:.3f} | "
            + " | ".join(f"{v:.3f}" for v in c["dsc_per_step"])
            + " | "
            + " | ".join(f"{v:.3f}" for v in c["nsd_per_step"])
            + " |"
        )
    header = "| model | " + " | ".join(f"s@{s} per case" for s in range(1, steps + 1))
    header += " | s per case | cases over 90 s/class | " + " | ".join(
        f"ms@{s} per structure" for s in range(1, steps + 1)
    )
    header += " |"
    lines += ["", header, "|" + "---|" * (header.count("|") - 1)]
    for model, values in summary.items():
        c = values.get("challenge")
        if c is None:
            continue
        lines.append(
            f"| {model} | "
            + " | ".join(f"{v:.2f}" for v in c["running_time_per_step_s"])
            + f" | {c['running_time_s']:.2f} | {c['over_time_limit']} | "
            + " | ".join(f"{v:.0f}" for v in values["time_per_step_ms"])
            + " |"
        )
    return lines
