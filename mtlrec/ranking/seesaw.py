"""The seesaw plot of `mtlrec compare ... --baseline ... --plot DIR`: task A's metric against task
B's, one point per configuration (mean over seeds, error bars: sample std over seeds), the
baseline drawn apart, and the Pareto front of the means (no other point is at least as good on
both tasks and better on one), each metric in its own direction."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mtlrec.metric_registry import direction
from mtlrec.outputs import writing
from mtlrec.report.table import Table


def seesaw_metrics(table: Table) -> list[str]:
    """The first two per-task metric columns (the `mean_*` columns are no task)."""
    return [m for m in table.metric_columns if "/mean_" not in m][:2]


def pareto_front(points: list[tuple[float, float]], maximize: tuple[bool, bool]) -> list[int]:
    """Indices of the points no other point dominates."""
    signed = [(x if maximize[0] else -x, y if maximize[1] else -y) for x, y in points]
    front = []
    for i, (x, y) in enumerate(signed):
        dominated = any(
            (a >= x and b >= y) and (a > x or b > y) for j, (a, b) in enumerate(signed) if j != i
        )
        if not dominated:
            front.append(i)
    return front


def _label(row: dict[str, Any], table: Table) -> str:
    keys = [c for c in table.columns if c not in table.metric_columns and not c.startswith("Δ")]
    keys = [k for k in keys if k not in ("n", "seeds", "wall_s", "status", "negative_transfer")]
    return " ".join(f"{k}={row[k]}" for k in keys) or "runs"


def write_seesaw(table: Table, out_dir: Path) -> Path | None:
    """DIR/seesaw.png (None: fewer than two per-task metrics)."""
    from mtlrec.report.plots import require_matplotlib

    metrics = seesaw_metrics(table)
    if len(metrics) < 2:
        return None
    plt = require_matplotlib()
    a, b = metrics
    rows = [r for r in table.rows if isinstance(r.get(a), tuple) and isinstance(r.get(b), tuple)]
    fig, ax = plt.subplots(figsize=(6.5, 5))
    points = [(r[a][0], r[b][0]) for r in rows]
    for row, (x, y) in zip(rows, points, strict=True):
        base = row.get("baseline", False)
        ax.errorbar(
            x, y, xerr=row[a][1], yerr=row[b][1], fmt="s" if base else "o",
            color="k" if base else None, capsize=3,
            label=_label(row, table) + (" (baseline)" if base else ""),
        )  # fmt: skip
    front = sorted(pareto_front(points, (direction(a) != "min", direction(b) != "min")))
    if len(front) > 1:
        xs, ys = zip(*sorted(points[i] for i in front), strict=True)
        ax.plot(xs, ys, "--", color="grey", lw=1, label="Pareto front")
    ax.set(xlabel=a, ylabel=b, title="seesaw: mean ± std over seeds")
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "seesaw.png"
    with writing(path):
        fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path
