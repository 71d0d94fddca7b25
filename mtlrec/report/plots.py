"""PNG plots of compared runs (`mtlrec compare ... --plot DIR`; extra `plot`: matplotlib).

Everything is drawn from what the run dirs hold (history.csv, metrics.json, .hydra/config.yaml):

* `learning_curves.png`: the monitored validation metric and the training loss per epoch, one
  colour per configuration: the runs of one configuration with different seeds are thin lines of
  that colour, with their mean and a ± std band (report/plot_curves.py);
* `task_curves.png`: the same per task (val/ctr_auc, val/cvr_auc, ...), one panel each;
* `<metric>_vs_<param>.png` for every swept numeric config value other than the seed: the metric
  (default: the first compared metric) against the parameter, mean +- sample std over the seeds
  of each point, one line per combination of the other swept values;
* `<metric>_by_<key>.png` for every swept categorical value (model, balancer, ...): bars of the
  metric, mean ± std over seeds (report/plot_bars.py);
* `moe_gates.png`: for runs whose history.csv has MoE gate columns `gate/{task}/expert_{e}`, a
  heatmap per run of the mean gate weight per task x expert at the best epoch (mean over the
  validation rows, as logged by the trainer). A row of one bright cell is a task that uses one
  expert; identical rows for every task mean the tasks share experts, i.e. MMoE degenerates
  into shared-bottom; a dark column is an expert nobody uses (collapse). For PLE the experts are
  labelled `task.i` (task-specific) and `shared.j`, for the last of its levels.
* `reliability.png`: a reliability diagram per binary task from each run's reliability.json (the
  test split's equal-mass bins at the best epoch; report/plot_reliability.py).

Legends sit outside the axes; training losses (and metrics that are better low) use a log y axis
when every value is positive. matplotlib runs on its Agg backend: no display needed.
"""

from __future__ import annotations

import math
import re
import shutil
import statistics
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mtlrec.errors import MtlrecError
from mtlrec.metric_registry import direction
from mtlrec.outputs import inject_fault, writing
from mtlrec.report.keys import SEED_KEYS, default_metrics, differing_keys, short_names
from mtlrec.report.plot_bars import plot_bars, safe_name
from mtlrec.report.plot_curves import (
    legend_outside,
    log_scale_if_positive,
    plot_learning_curves,
    plot_task_curves,
    seed_group_labels,
)
from mtlrec.report.plot_reliability import plot_reliability
from mtlrec.runs.atomic import save_png

if TYPE_CHECKING:
    from mtlrec.runs.records import Run

GATE_COLUMN = re.compile(r"^gate/(?P<task>.+)/expert_(?P<expert>\d+)$")
UTILIZATION = "utilization"  # gate/utilization/expert_e: the mean over tasks (models/layers.py)
MAX_CURVES = 24  # more lines than this are unreadable; the rest are left out (said in the title)


def require_matplotlib():
    try:
        import matplotlib
    except ImportError:
        raise MtlrecError(
            'plots need matplotlib: pip install "mtlrec[plot]" (or drop --plot)'
        ) from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _label(run: Run, keys: list[str], names: dict[str, str]) -> str:
    if not keys:
        return run.path.name
    return " ".join(f"{names[k]}={_short(run.config.get(k))}" for k in keys)


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


_safe = safe_name


def gate_matrix(history: list[dict[str, Any]], epoch: int | None) -> tuple[list, list, list]:
    """(tasks, experts, weights[t][e]) from the history row of `epoch` (None = last row)."""
    if not history:
        return [], [], []
    row = next((r for r in history if r.get("epoch") == epoch), history[-1])
    cells: dict[tuple[str, int], float] = {}
    for key, value in row.items():
        m = GATE_COLUMN.match(key)
        if m and isinstance(value, (int, float)) and not math.isnan(value):
            cells[(m["task"], int(m["expert"]))] = float(value)
    tasks = list(dict.fromkeys(t for t, _ in cells))
    if UTILIZATION in tasks:  # the mean over tasks, not a task: always the last row
        tasks = [t for t in tasks if t != UTILIZATION] + [UTILIZATION]
    experts = sorted({e for _, e in cells})
    weights = [[cells.get((t, e), math.nan) for e in experts] for t in tasks]
    return tasks, experts, weights


def plot_metric_vs_params(
    plt, runs: list[Run], keys: list[str], names: dict[str, str], metric: str, out: Path
) -> list[Path]:
    """One PNG per numeric swept key (seed excluded): metric mean +- std over seeds per value."""
    done = [r for r in runs if metric in r.metrics]
    written = []
    for key in keys:
        if key in SEED_KEYS:
            continue
        raw = [r.config.get(key) for r in done]
        values = [v for v in raw if isinstance(v, (int, float)) and not isinstance(v, bool)]
        if not values or len(values) < len(raw):  # a missing or non-numeric value
            continue
        others = [k for k in keys if k != key and k not in SEED_KEYS]
        lines: dict[str, dict[float, list[float]]] = {}
        for run in done:
            line = " ".join(f"{names[k]}={_short(run.config.get(k))}" for k in others) or metric
            lines.setdefault(line, {}).setdefault(float(run.config[key]), []).append(
                run.metrics[metric]
            )
        fig, ax = plt.subplots(figsize=(6.5, 4.5))
        for line, points in lines.items():
            xs = sorted(points)
            means = [statistics.fmean(points[x]) for x in xs]
            stds = [statistics.stdev(points[x]) if len(points[x]) > 1 else 0.0 for x in xs]
            counts = sorted({len(points[x]) for x in xs})
            n = f" (n={counts[0]})" if len(counts) == 1 else f" (n={counts[0]}-{counts[-1]})"
            ax.errorbar(xs, means, yerr=stds, fmt="o-", capsize=4, label=line + n)
        if len(set(values)) > 2 and min(values) > 0 and max(values) / min(values) >= 8:
            ax.set_xscale("log", base=2)
        ax.set_xticks(sorted({float(v) for v in values}))
        ax.set_xticklabels([_short(v) for v in sorted({float(v) for v in values})])
        ax.set(
            title=f"{metric} vs {names[key]} (mean ± std over seeds)",
            xlabel=key,
            ylabel=metric,
        )
        ax.grid(alpha=0.3)
        legend_outside(ax)
        if direction(metric) == "min":
            log_scale_if_positive(ax)
        fig.tight_layout()
        path = out / f"{_safe(metric)}_vs_{_safe(names[key])}.png"
        save_png(fig, path, dpi=110, bbox_inches="tight")
        plt.close(fig)
        written.append(path)
    return written


def expert_labels(config: dict, tasks: list[str], experts: list[int]) -> tuple[list[str], int]:
    """Tick labels of the gate heatmap's experts, and how many are task-specific (0: none).

    PLE logs its last level's gates in a global expert order: expert e < T*S (S =
    model.num_specific_experts) is task e // S's own expert, the others are shared."""
    specific = config.get("model.num_specific_experts")
    if config.get("model.name") != "ple" or not isinstance(specific, int) or specific < 1:
        return [str(e) for e in experts], 0
    own = len(tasks) * specific
    names = [
        f"{tasks[e // specific]}.{e % specific}" if e < own else f"shared.{e - own}"
        for e in experts
    ]
    return names, own


def plot_gates(plt, runs: list[Run], labels: dict, out: Path) -> Path | None:
    panels = []
    for run in runs:
        tasks, experts, weights = gate_matrix(run.history, run.info.get("best_epoch"))
        if tasks and len(experts) > 0:
            panels.append((run, tasks, experts, weights))
    panels = panels[:MAX_CURVES]
    if not panels:
        return None
    cols = min(3, len(panels))  # <= 3 heatmaps a row: readable expert labels and numbers
    rows = math.ceil(len(panels) / cols)
    width = max(3.6, 0.55 * max(len(p[2]) for p in panels) + 2.2)
    height = max(2.0, 0.5 * max(len(p[1]) for p in panels) + 1.4)
    fig, axes = plt.subplots(
        rows,
        cols,
        figsize=(width * cols + 1.5, height * rows + 0.6),
        squeeze=False,
        layout="constrained",
    )
    for ax in axes.flat[len(panels) :]:
        ax.axis("off")
    for ax, (run, tasks, experts, weights) in zip(axes.flat, panels, strict=False):
        image = ax.imshow(weights, vmin=0.0, vmax=1.0, cmap="viridis", aspect="auto")
        names, own = expert_labels(run.config, tasks, experts)
        ax.set_xticks(range(len(experts)), names, fontsize=7, rotation=45 if own else 0)
        rows_shown = ["all tasks (mean)" if t == UTILIZATION else t for t in tasks]
        ax.set_yticks(range(len(tasks)), rows_shown, fontsize=8)
        if own:  # PLE: a line between the task-specific experts and the shared ones
            ax.axvline(own - 0.5, color="white", lw=1.5)
        if tasks[-1] == UTILIZATION and len(tasks) > 1:  # set the mean apart from the tasks
            ax.axhline(len(tasks) - 1.5, color="white", lw=3)
        ax.set_xlabel("expert (task-specific | shared)" if own else "expert", fontsize=8)
        epoch = run.info.get("best_epoch")
        levels = run.config.get("model.num_levels")
        where = f", last of {levels} levels" if own and levels else ""
        title = f"{labels[run.path]}\n(epoch {epoch if epoch else 'last'}{where})"
        ax.set_title(title, fontsize=8)
        if len(experts) <= 8:
            for t in range(len(tasks)):
                for e in range(len(experts)):
                    w = weights[t][e]
                    ax.text(
                        e,
                        t,
                        f"{w:.2f}",
                        ha="center",
                        va="center",
                        fontsize=7,
                        color="black" if w > 0.6 else "white",
                    )
    fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.8, label="mean gate weight")
    fig.suptitle("MoE gates: mean weight per task x expert")
    path = out / "moe_gates.png"
    save_png(fig, path, dpi=110)
    plt.close(fig)
    return path


PLOTS_MARKER = ".mtlrec-plots"  # in a --plot dir compare made: its PNGs may be replaced


def check_plot_dir(out_dir: Path, overwrite: bool) -> None:
    """A --plot dir compare did not make (no marker) that holds PNGs is refused in one line
    unless --overwrite: plots of the same names would replace the user's images unsaid."""
    if not out_dir.is_dir() or (out_dir / PLOTS_MARKER).exists():
        return
    if overwrite:  # the user hands the dir to compare: later --plot runs may replace its PNGs
        (out_dir / PLOTS_MARKER).touch()
        return
    png = next(iter(sorted(out_dir.glob("*.png"))), None)
    if png is not None:
        raise MtlrecError(
            f"--plot {out_dir}: holds {png.name}, which mtlrec compare did not write; plot into "
            "a new directory, or add --overwrite to replace its PNGs of the same names"
        )


def write_plots(runs: list[Run], out_dir: Path, metrics: list[str] | None = None) -> list[Path]:
    """Write every plot that the runs have data for; returns the written paths."""
    plt = require_matplotlib()
    out_dir = Path(out_dir)
    created = not out_dir.exists()
    with writing(out_dir):
        inject_fault(out_dir, no_space=False)  # tests: a read-only parent dir
        out_dir.mkdir(parents=True, exist_ok=True)
        if created:  # a dir of compare's own: later --plot runs may replace its PNGs
            (out_dir / PLOTS_MARKER).touch()
    try:
        return _write_all(plt, runs, out_dir, metrics)
    except BaseException:
        if created and not [p for p in out_dir.iterdir() if p.name != PLOTS_MARKER]:
            shutil.rmtree(out_dir, ignore_errors=True)  # nothing written: no empty dir left behind
        raise


def _write_all(plt, runs: list[Run], out_dir: Path, metrics: list[str] | None) -> list[Path]:
    keys = differing_keys(runs)
    names = short_names(keys)
    shown = [k for k in keys if k not in ("data_order_seed",)]
    labels = {r.path: _label(r, shown, names) for r in runs}
    if len(set(labels.values())) < len(labels):  # e.g. no differing keys: fall back to dir names
        labels = {r.path: f"{r.path.parent.name}/{r.path.name}" for r in runs}
    written = []
    groups = seed_group_labels(runs, keys, names)
    for curves in (
        plot_learning_curves(plt, runs, groups, out_dir),
        plot_task_curves(plt, runs, groups, out_dir),
    ):
        if curves:
            written.append(curves)
    candidates = metrics or default_metrics(runs)
    metric = candidates[0] if candidates else None
    if metric:
        written += plot_metric_vs_params(plt, runs, keys, names, metric, out_dir)
        written += plot_bars(plt, runs, keys, names, metric, out_dir)
    for extra in (
        plot_gates(plt, runs, labels, out_dir),
        plot_reliability(plt, runs, labels, out_dir),
    ):
        if extra:
            written.append(extra)
    return written
