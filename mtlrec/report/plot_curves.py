"""`learning_curves.png`: the monitored validation metric and the training loss per epoch;
`task_curves.png`: the validation metric of the monitored kind per task (one panel per task).

One colour per configuration (the compared runs' differing config values, seeds aside): the
runs of a configuration that differ only in their seed are drawn as thin lines of its colour,
with their per-epoch mean as a thick line and mean ± sample std as a shaded band; the legend
(one entry per configuration, with n) sits outside the axes. The loss axis is logarithmic
when every loss is positive: losses fall by orders of magnitude.
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mtlrec.metric_registry import parse
from mtlrec.report.keys import SEED_KEYS
from mtlrec.runs.atomic import save_png

if TYPE_CHECKING:
    from mtlrec.runs.records import Run

MAX_GROUPS = 20  # distinct colours (tab20); more configurations are left out (said in the title)


def _short(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def seed_group_labels(runs: list[Run], keys: list[str], names: dict[str, str]) -> dict[Path, str]:
    """Run path -> the label of its configuration; runs differing only in seeds share one."""
    shown = [k for k in keys if k not in SEED_KEYS]
    return {
        r.path: " ".join(f"{names[k]}={_short(r.config.get(k))}" for k in shown) or "runs"
        for r in runs
    }


def legend_outside(ax) -> None:
    """The legend right of the axes: it never hides a curve, however many runs there are."""
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)


def log_scale_if_positive(ax) -> None:
    """Log y when every drawn value is > 0 (losses fall by orders of magnitude)."""
    ys = [y for line in ax.get_lines() for y in line.get_ydata() if not math.isnan(y)]
    if ys and min(ys) > 0:
        ax.set_yscale("log")


def mean_band(members: list[Run], key: str) -> tuple[list[int], list[float], list[float]]:
    """(epochs, mean, sample std) of `key` per epoch over the runs that reached the epoch."""
    by_epoch: dict[int, list[float]] = {}
    for run in members:
        for row in run.history:
            value = row.get(key)
            if isinstance(value, (int, float)) and not math.isnan(value):
                by_epoch.setdefault(int(row["epoch"]), []).append(float(value))
    epochs = sorted(by_epoch)
    means = [statistics.fmean(by_epoch[e]) for e in epochs]
    stds = [statistics.stdev(by_epoch[e]) if len(by_epoch[e]) > 1 else 0.0 for e in epochs]
    return epochs, means, stds


def _draw(ax, members: list[Run], key: str, colour, label: str) -> None:
    for run in members:
        epochs = [row["epoch"] for row in run.history]
        values = [row.get(key, math.nan) for row in run.history]
        single = len(members) == 1
        ax.plot(
            epochs,
            values,
            "o-" if single else "-",
            ms=3,
            lw=1.5 if single else 0.8,
            alpha=1.0 if single else 0.35,
            color=colour,
            label=label if single else None,
        )
    if len(members) > 1:
        epochs, means, stds = mean_band(members, key)
        ax.plot(epochs, means, "o-", ms=3, lw=2.0, color=colour, label=label)
        lows = [m - s for m, s in zip(means, stds, strict=True)]
        highs = [m + s for m, s in zip(means, stds, strict=True)]
        ax.fill_between(epochs, lows, highs, color=colour, alpha=0.2, lw=0)


def _groups(runs: list[Run], labels: dict[Path, str]) -> dict[str, list[Run]]:
    groups: dict[str, list[Run]] = {}
    for run in runs:
        if run.history:
            groups.setdefault(labels[run.path], []).append(run)
    return groups


def plot_learning_curves(plt, runs: list[Run], labels: dict, out: Path) -> Path | None:
    """`labels`: run path -> configuration label (runs with one label are one colour)."""
    groups = _groups(runs, labels)
    if not groups:
        return None
    first = next(iter(groups.values()))[0]
    monitor = next((r.monitor for g in groups.values() for r in g if r.monitor), None)
    if monitor is None:  # no completed run: take the first val metric of the history
        monitor = next((k for k in first.history[0] if k.startswith("val/")), None)
    shown = dict(list(groups.items())[:MAX_GROUPS])
    cmap = plt.get_cmap("tab10" if len(shown) <= 10 else "tab20")
    fig, (ax_val, ax_loss) = plt.subplots(1, 2, figsize=(12, 4.5))
    for i, (label, members) in enumerate(shown.items()):
        text = f"{label} (n={len(members)})" if len(members) > 1 else label
        if monitor:
            _draw(ax_val, members, monitor, cmap(i % cmap.N), text)
        _draw(ax_loss, members, "train/loss", cmap(i % cmap.N), text)
    from matplotlib.ticker import MaxNLocator

    ax_val.set(title=f"{monitor} per epoch", xlabel="epoch", ylabel=monitor)
    ax_loss.set(title="train/loss per epoch", xlabel="epoch", ylabel="train/loss")
    for ax in (ax_val, ax_loss):
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    log_scale_if_positive(ax_loss)
    if len(groups) > len(shown):
        fig.suptitle(
            f"first {len(shown)} configurations ({len(groups) - len(shown)} more not drawn)"
        )
    legend_outside(ax_loss)
    fig.tight_layout()
    path = out / "learning_curves.png"
    save_png(fig, path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def task_keys(runs: list[Run], monitor: str | None) -> list[str]:
    """The per-task validation keys of the monitored metric kind in the histories, e.g.
    val/ctr_auc, val/cvr_auc, val/cvr_auc_entire for val/mean_auc (the mean itself left out)."""
    wanted = parse(monitor) if monitor else None
    keys: list[str] = []
    for run in runs:
        for key in run.history[0] if run.history else {}:
            parsed = parse(key)
            if (
                parsed is not None
                and parsed.split == "val"
                and parsed.task not in (None, "mean")
                and (wanted is None or parsed.metric == wanted.metric)
                and key not in keys
            ):
                keys.append(key)
    return keys


def plot_task_curves(plt, runs: list[Run], labels: dict, out: Path) -> Path | None:
    """One panel per task metric, the same colours as learning_curves.png; needs >= 2 tasks."""
    groups = _groups(runs, labels)
    monitor = next((r.monitor for g in groups.values() for r in g if r.monitor), None)
    keys = task_keys([r for g in groups.values() for r in g], monitor)
    if len(keys) < 2:
        return None
    from matplotlib.ticker import MaxNLocator

    shown = dict(list(groups.items())[:MAX_GROUPS])
    cmap = plt.get_cmap("tab10" if len(shown) <= 10 else "tab20")
    cols = min(3, len(keys))
    rows = math.ceil(len(keys) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.6 * rows), squeeze=False)
    for ax, key in zip(axes.flat, keys, strict=False):
        for i, (label, members) in enumerate(shown.items()):
            text = f"{label} (n={len(members)})" if len(members) > 1 else label
            _draw(ax, members, key, cmap(i % cmap.N), text)
        ax.set(title=key, xlabel="epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs 1, 2 (never 1.5)
        ax.grid(alpha=0.3)
    for ax in axes.flat[len(keys) :]:
        ax.axis("off")
    legend_outside(axes.flat[cols - 1])
    fig.suptitle("validation metric per task and epoch")
    fig.tight_layout()
    path = out / "task_curves.png"
    save_png(fig, path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path
