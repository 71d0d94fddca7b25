"""`reliability.png` of `mtlrec compare --plot`: one reliability diagram per binary task.

Each run dir's reliability.json holds the test split's equal-mass bins at the best epoch (mean
prediction, positive rate, rows per bin; mtlrec.training.calibration). A panel per task draws,
for every run, the positive rate against the mean prediction of each bin; the diagonal is perfect
calibration (a point below it over-predicts). Both axes are logarithmic when every value is
positive: click and conversion rates of a few percent are then readable.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mtlrec.report.plot_curves import legend_outside

if TYPE_CHECKING:
    from mtlrec.runs.records import Run

MAX_RUNS = 12


def read_bins(run: Run) -> dict[str, dict[str, list[float]]]:
    from mtlrec.training.calibration import RELIABILITY_FILE  # lazily: compare imports no training

    path = Path(run.path) / RELIABILITY_FILE
    try:
        targets = json.loads(path.read_text()).get("targets") or {}
    except (OSError, ValueError, AttributeError):
        return {}  # a run from before calibration metrics, or a damaged file: no diagram
    return {k: v for k, v in targets.items() if isinstance(v, dict) and v.get("rows")}


def plot_reliability(plt: Any, runs: list[Run], labels: dict, out: Path) -> Path | None:
    per_run = [(run, read_bins(run)) for run in runs[:MAX_RUNS]]
    tasks = sorted({t for _, bins in per_run for t in bins})
    if not tasks:
        return None
    fig, axes = plt.subplots(
        1, len(tasks), figsize=(4.2 * len(tasks) + 2.5, 4.0), squeeze=False, layout="constrained"
    )
    for ax, task in zip(axes.flat, tasks, strict=True):
        values: list[float] = []
        for run, bins in per_run:
            if task not in bins:
                continue
            x, y = bins[task]["mean_prediction"], bins[task]["positive_rate"]
            ax.plot(x, y, marker="o", ms=3, lw=1, label=labels[run.path])
            values += [*x, *y]
        low = min(values) if values else 0.0
        high = max(values) if values else 1.0
        if low > 0:
            ax.set_xscale("log")
            ax.set_yscale("log")
        edge = (low / 1.2 if low > 0 else 0.0), min(high * 1.2, 1.0) if high > 0 else 1.0
        ax.plot(edge, edge, color="grey", ls="--", lw=1, label="calibrated")
        ax.set_title(f"{task} (test)")
        ax.set_xlabel("mean prediction per bin")
        ax.set_ylabel("positive rate per bin")
        if math.isfinite(low):
            ax.grid(alpha=0.3)
    legend_outside(axes.flat[len(tasks) - 1])
    fig.suptitle("reliability: equal-mass bins of the test predictions")
    path = out / "reliability.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
