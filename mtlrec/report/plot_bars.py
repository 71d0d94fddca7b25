"""`<metric>_by_<key>.png`: a bar chart of a metric per value of a categorical config key.

One group of bars per value of the key (e.g. `model`: esmm, mmoe, ple), one bar colour per
combination of the other swept values (the seed aside); each bar is the mean over the seeds of
that configuration with the sample standard deviation as its error bar, and n under the value.
The legend sits outside the axes, so it never hides a bar. Losses and other metrics that are
better low are drawn the same way (the y axis starts at 0 for them; AUCs zoom to their range).
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mtlrec.metric_registry import direction
from mtlrec.report.keys import SEED_KEYS
from mtlrec.runs.atomic import save_png

if TYPE_CHECKING:
    from mtlrec.runs.records import Run

MAX_VALUES = 30  # more bars than this per chart are unreadable


def _text(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def is_categorical(values: list[Any]) -> bool:
    """Strings, booleans, lists (expert_dims) or None: not a number axis."""
    return any(isinstance(v, (str, bool, list, dict)) or v is None for v in values)


def bar_data(
    runs: list[Run], key: str, others: list[str], names: dict[str, str], metric: str
) -> tuple[list[str], dict[str, dict[str, list[float]]]]:
    """(values of `key` in first-seen order, {series label: {value: [metric per seed]}})."""
    values: list[str] = []
    series: dict[str, dict[str, list[float]]] = {}
    for run in runs:
        if metric not in run.metrics:
            continue
        value = _text(run.config.get(key))
        if value not in values:
            values.append(value)
        label = " ".join(f"{names[k]}={_text(run.config.get(k))}" for k in others) or metric
        series.setdefault(label, {}).setdefault(value, []).append(run.metrics[metric])
    return values, series


def bar_figure(plt, runs: list[Run], key: str, keys: list[str], names: dict[str, str], metric: str):
    """The figure (not saved): grouped bars, mean ± sample std over seeds."""
    others = [k for k in keys if k != key and k not in SEED_KEYS]
    values, series = bar_data(runs, key, others, names, metric)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(values) * max(1, len(series)) + 2), 4.5))
    cmap = plt.get_cmap("tab20" if len(series) > 10 else "tab10")
    width = 0.8 / max(1, len(series))
    lows = []
    for s, (label, points) in enumerate(series.items()):
        xs = [v + (s - (len(series) - 1) / 2) * width for v in range(len(values))]
        means = [statistics.fmean(points[v]) if v in points else math.nan for v in values]
        stds = [statistics.stdev(points[v]) if len(points.get(v, [])) > 1 else 0.0 for v in values]
        ax.bar(xs, means, width * 0.95, yerr=stds, capsize=3, color=cmap(s % cmap.N), label=label)
        lows += [m - d for m, d in zip(means, stds, strict=True) if not math.isnan(m)]
    counts = [sorted({len(p.get(v, [])) for p in series.values()} - {0}) for v in values]
    ax.set_xticks(
        range(len(values)),
        [f"{v}\n(n={'/'.join(map(str, c))})" for v, c in zip(values, counts, strict=True)],
    )
    if direction(metric) == "max" and lows:  # AUCs: zoom to where the bars differ
        ax.set_ylim(bottom=max(0.0, min(lows) - 0.05))
    ax.set(title=f"{metric} by {names[key]} (mean ± std over seeds)", xlabel=key, ylabel=metric)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    return fig


def safe_name(name: str) -> str:
    import re

    return re.sub(r"[^0-9A-Za-z_.-]+", "_", name).strip("_")


def plot_bars(
    plt, runs: list[Run], keys: list[str], names: dict[str, str], metric: str, out: Path
) -> list[Path]:
    """One PNG per categorical swept key (model, balancer, dataset, ...)."""
    done = [r for r in runs if metric in r.metrics]
    written = []
    for key in keys:
        if key in SEED_KEYS:
            continue
        values = [r.config.get(key) for r in done]
        if not values or not is_categorical(values) or len({_text(v) for v in values}) > MAX_VALUES:
            continue
        fig = bar_figure(plt, done, key, keys, names, metric)
        path = out / f"{safe_name(metric)}_by_{safe_name(names[key])}.png"
        save_png(fig, path, dpi=110, bbox_inches="tight")
        plt.close(fig)
        written.append(path)
    return written
