"""The fusion plots (matplotlib, the `plot` extra): the val metric of every trial in search order
with the running best, and, for 2-3 fused tasks, the val trade-off over the weights' shares
(2 tasks: metric vs the second task's share of the weight; 3 tasks: the share triangle, coloured
by the metric). Written next to the fusion record, never over another file."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from mtlrec.ranking.record import write_new
from mtlrec.ranking.search import Trial


def _save(fig, path: Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    write_new(path, buf.getvalue())
    return path


def write_fusion_plots(
    trials: list[Trial], tasks: list[str], metric: str, form: str, stem: Path
) -> list[Path]:
    """<stem>_trials.png and (2-3 tasks) <stem>_tradeoff.png; returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    values = np.array([t.value for t in trials], dtype=float)
    feasible = np.array([t.feasible for t in trials])
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.scatter(np.flatnonzero(feasible), values[feasible], s=10, label="trial")
    if (~feasible).any():
        ax.scatter(np.flatnonzero(~feasible), values[~feasible], s=10, c="grey", label="infeasible")
    best = np.maximum.accumulate(np.where(feasible & np.isfinite(values), values, -np.inf))
    ax.plot(np.arange(len(best)), best, c="C3", label="best so far")
    ax.set(xlabel="trial", ylabel=f"val {metric}", title=f"fusion search ({form})")
    ax.legend(fontsize=8)
    written.append(_save(fig, stem.with_name(stem.name + "_trials.png")))
    plt.close(fig)
    if len(tasks) in (2, 3):
        written.append(_tradeoff(plt, trials, tasks, metric, form, stem))
    return written


def _tradeoff(plt, trials: list[Trial], tasks: list[str], metric: str, form: str, stem: Path):
    w = np.array([t.weights for t in trials], dtype=float)
    values = np.array([t.value for t in trials], dtype=float)
    share = w / np.clip(w.sum(axis=1, keepdims=True), 1e-12, None)
    fig, ax = plt.subplots(figsize=(5.5, 4))
    if len(tasks) == 2:
        order = np.argsort(share[:, 1])
        ax.plot(share[order, 1], values[order], marker=".", lw=0.8)
        ax.set(
            xlabel=f"share of weight on {tasks[1]} ({tasks[0]}: 1 - share)", ylabel=f"val {metric}"
        )
    else:
        # The share triangle: corners are all weight on one task.
        x = share[:, 1] + share[:, 2] / 2
        y = share[:, 2] * np.sqrt(3) / 2
        points = ax.scatter(x, y, c=values, cmap="viridis", s=18)
        fig.colorbar(points, ax=ax, label=f"val {metric}")
        corners = [(0, 0), (1, 0), (0.5, np.sqrt(3) / 2)]
        ax.plot(*zip(*(corners + corners[:1]), strict=True), c="k", lw=0.6)
        for (cx, cy), name in zip(corners, tasks, strict=True):
            ax.annotate(name, (cx, cy), ha="center", va="bottom" if cy else "top")
        ax.set_axis_off()
        ax.set_aspect("equal")
    ax.set_title(f"val trade-off ({form})")
    path = _save(fig, stem.with_name(stem.name + "_tradeoff.png"))
    plt.close(fig)
    return path
