"""Run outputs people read: ``trials.csv``, ``pareto.json``, ``pareto.png`` and a front table."""
from __future__ import annotations

import csv
import json
import math
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np

from .pareto import knee_point, pareto_mask
from ..evaluators.problem import Problem
from .store import TrialRecord

PARETO_SCHEMA_VERSION = 1


def front(records: Sequence[TrialRecord], problem: Problem) -> list[TrialRecord]:
    """Non-dominated feasible trials, best first by the first objective. Duplicates of one
    candidate (a strategy may re-propose) are kept once; a trial with a missing or NaN objective
    cannot be ranked and is left out, with a warning naming it."""
    seen: dict[str, TrialRecord] = {}
    unranked = []
    for r in records:
        if r.status != "complete" or r.candidate.id in seen:
            continue
        if any(not isinstance(r.metrics.get(m), float) or math.isnan(r.metrics[m]) for m in problem.metrics):
            unranked.append(r.number)
            continue
        seen[r.candidate.id] = r
    if unranked:
        warnings.warn(f"Pareto front: trials {unranked[:10]}{' ...' if len(unranked) > 10 else ''} have no value for an objective "
                      f"({', '.join(problem.metrics)}) and are left out", RuntimeWarning, stacklevel=2)
    feasible = list(seen.values())
    if not feasible:
        return []
    values = np.stack([problem.values(r.metrics) for r in feasible])
    mask = pareto_mask(values, problem.directions)
    chosen = [r for r, keep in zip(feasible, mask) if keep]
    sign = -1.0 if problem.directions[0] == "maximize" else 1.0
    return sorted(chosen, key=lambda r: sign * r.metrics[problem.metrics[0]])


def knee(front_records: Sequence[TrialRecord], problem: Problem) -> TrialRecord | None:
    if not front_records:
        return None
    values = np.stack([problem.values(r.metrics) for r in front_records])
    return front_records[knee_point(values, problem.directions)]


def write_trials_csv(records: Sequence[TrialRecord], path: Path) -> None:
    metric_names = sorted({m for r in records for m in r.metrics})
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["number", "candidate_id", "status", *metric_names, "duration_s", "worker", "error", "candidate"])
        for r in records:
            writer.writerow([r.number, r.candidate.id, r.status, *(r.metrics.get(m, "") for m in metric_names), f"{r.duration:.4f}", r.worker, r.error, r.candidate.dumps()])


def write_pareto_json(front_records: Sequence[TrialRecord], problem: Problem, path: Path, extra: dict | None = None) -> None:
    k = knee(front_records, problem)
    doc = {
        "schema": PARETO_SCHEMA_VERSION,
        "objectives": [{"metric": o.metric, "direction": o.direction} for o in problem.objectives],
        "constraints": [{"metric": c.metric, "max": c.max, "min": c.min} for c in problem.constraints],
        "knee": None if k is None else k.number,
        "front": [{"number": r.number, "candidate_id": r.candidate.id, "metrics": r.metrics, "candidate": r.candidate.to_json()} for r in front_records],
        **(extra or {}),
    }
    path.write_text(json.dumps(doc, indent=2, sort_keys=True))


def plot_pareto(records: Sequence[TrialRecord], problem: Problem, path: Path, title: str = "") -> None:
    """All feasible trials in grey, the front in colour, the knee marked; 3 objectives -> 3 panels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    feasible = [r for r in records if r.status == "complete"]
    best = front(records, problem)
    k = knee(best, problem)
    names = problem.metrics
    pairs = [(0, 1)] if len(names) == 2 else [(i, j) for i in range(len(names)) for j in range(i + 1, len(names))]
    if len(names) == 1:
        pairs = []
    fig, axes = plt.subplots(1, max(1, len(pairs)), figsize=(5.5 * max(1, len(pairs)), 4.5), squeeze=False)
    for ax, (i, j) in zip(axes[0], pairs):
        xi, yi = names[i], names[j]
        ax.scatter([r.metrics[xi] for r in feasible], [r.metrics[yi] for r in feasible], s=10, c="0.75", label=f"trials ({len(feasible)})")
        pts = sorted((r.metrics[xi], r.metrics[yi]) for r in best)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-" if len(names) == 2 else "o", color="tab:red", ms=4, lw=1, label=f"Pareto front ({len(best)})")
        if k is not None:
            ax.scatter([k.metrics[xi]], [k.metrics[yi]], s=120, facecolors="none", edgecolors="black", label="knee")
        better = {"maximize": "higher is better", "minimize": "lower is better"}
        ax.set_xlabel(f"{xi} ({better[problem.directions[i]]})")
        ax.set_ylabel(f"{yi} ({better[problem.directions[j]]})")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if not pairs:
        axes[0][0].hist([r.metrics[names[0]] for r in feasible], bins=30)
        axes[0][0].set_xlabel(names[0])
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def format_front(front_records: Sequence[TrialRecord], problem: Problem, knee_number: int | None = None, limit: int = 50) -> str:
    """The front as an aligned text table."""
    metrics = list(problem.metrics) + [m for m in problem.constrained_metrics if m not in problem.metrics]
    header = ["#", "trial", "candidate", *metrics, ""]
    rows = []
    for i, r in enumerate(front_records[:limit]):
        rows.append([str(i), str(r.number), r.candidate.id, *(f"{r.metrics.get(m, float('nan')):.4g}" for m in metrics), "knee" if r.number == knee_number else ""])
    widths = [max(len(h), *(len(row[c]) for row in rows)) if rows else len(h) for c, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths)).rstrip()]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip() for row in rows]
    if len(front_records) > limit:
        lines.append(f"... {len(front_records) - limit} more")
    return "\n".join(lines)
