"""Runs -> one table (columns + raw values), the same for every output format.

One row per run: the differing config values (short names), the chosen metrics, best epoch,
epochs run, wall time, training samples/s, status (and error when any run has one).

Seed groups (`group_by_seed`, automatic when the seed is the only config value that differs):
runs that differ only in `seed` / `data_order_seed` form one row with, per metric, the mean and
the sample standard deviation s = sqrt(sum (x - mean)^2 / (n - 1)) over the completed runs of the
group (s = 0 for n = 1), and n. Such a cell holds the tuple (mean, std).
"""

from __future__ import annotations

import json
import math
import os
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mtlrec.errors import MtlrecError
from mtlrec.metric_registry import direction
from mtlrec.report.keys import SEED_KEYS, default_metrics, differing_keys, short_names
from mtlrec.runs.records import Run

RUN_COLUMNS = ("best_epoch", "epochs", "wall_s", "samples_per_s", "status")
GROUP_COLUMNS = ("n", "seeds", "wall_s", "status")
NUMERIC_COLUMNS = ("best_epoch", "epochs", "wall_s", "samples_per_s", "n")
# A metric the run recorded as null (an AUC of one class: metrics.json `undefined_metrics`) is
# NaN in the table and reads "undefined"; a metric the run does not have at all stays blank.
UNDEFINED = "undefined"


@dataclass
class Table:
    """Columns and rows ready for any output format. Values stay raw (float/int/str/None)."""

    columns: list[str]
    rows: list[dict[str, Any]]
    metric_columns: list[str]
    grouped: bool = False


def format_cell(value: Any, column: str) -> str:
    """The text of one table/markdown cell."""
    if value is None:
        return ""
    if isinstance(value, tuple):
        mean, std = value
        return f"{mean:.4f} ± {std:.4f}"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        if math.isnan(value):
            return UNDEFINED
        if column == "samples_per_s":
            return f"{value:,.0f}"
        if column == "wall_s":
            return f"{value:.1f}"
        return f"{value:.4f}" if abs(value) < 1e4 else f"{value:.4g}"
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    return str(value)


def display_labels(runs: list[Run]) -> dict[Path, str]:
    """Run paths relative to their common parent (sweep job numbers stay short)."""
    paths = [r.path for r in runs]
    if len(paths) == 1:
        return {paths[0]: paths[0].name}
    common = Path(os.path.commonpath([str(p) for p in paths]))
    return {p: str(p.relative_to(common)) or p.name for p in paths}


def build_table(
    runs: list[Run],
    metrics: list[str] | None = None,
    group_by_seed: bool | None = None,
) -> Table:
    """Runs -> table. group_by_seed None = automatic (when only the seed differs)."""
    keys = differing_keys(runs)
    names = short_names(keys)
    metrics = metrics or default_metrics(runs)
    only_seed = bool(keys) and all(k in SEED_KEYS for k in keys) and len(runs) > 1
    grouped = only_seed if group_by_seed is None else group_by_seed
    if grouped:
        return _group_table(runs, [k for k in keys if k not in SEED_KEYS], names, metrics)
    return _run_table(runs, keys, names, metrics)


def _run_table(
    runs: list[Run], keys: list[str], names: dict[str, str], metrics: list[str]
) -> Table:
    labels = display_labels(runs)
    any_error = any(r.info.get("error") or r.problems for r in runs)
    columns = ["run", *[names[k] for k in keys], *metrics, *RUN_COLUMNS]
    columns += ["error"] if any_error else []
    rows = []
    for run in runs:
        row: dict[str, Any] = {"run": labels[run.path]}
        row.update({names[k]: run.config.get(k) for k in keys})
        row.update({m: metric_value(run, m) for m in metrics})
        row["best_epoch"] = run.info.get("best_epoch")
        row["epochs"] = run.info.get("epochs_run") or len(run.history) or None
        row["wall_s"] = run.info.get("wall_seconds")
        row["samples_per_s"] = run.info.get("train_samples_per_s")
        row["status"] = run.status
        if any_error:
            row["error"] = run.info.get("error") or "; ".join(run.problems) or None
        rows.append(row)
    return Table(columns, rows, metrics)


def _group_table(
    runs: list[Run], group_keys: list[str], names: dict[str, str], metrics: list[str]
) -> Table:
    groups: dict[str, list[Run]] = {}
    for run in runs:
        ident = json.dumps([run.config.get(k) for k in group_keys], default=str)
        groups.setdefault(ident, []).append(run)
    columns = [names[k] for k in group_keys] + metrics + list(GROUP_COLUMNS)
    rows = []
    for members in groups.values():
        done = [r for r in members if r.status == "completed"]
        row: dict[str, Any] = {names[k]: members[0].config.get(k) for k in group_keys}
        for m in metrics:
            row[m] = mean_std([r.metrics[m] for r in done if m in r.metrics])
            if row[m] is None and any(_recorded_null(r, m) for r in done):
                row[m] = math.nan  # undefined in every run that has it
        row["n"] = len(done)
        row["seeds"] = ",".join(str(r.config.get("seed", r.info.get("seed"))) for r in members)
        walls = [r.info["wall_seconds"] for r in done if r.info.get("wall_seconds") is not None]
        row["wall_s"] = statistics.fmean(walls) if walls else None
        counts: dict[str, int] = {}
        for r in members:
            counts[r.status] = counts.get(r.status, 0) + 1
        row["status"] = ", ".join(f"{c} {s}" for s, c in counts.items())
        rows.append(row)
    return Table(columns, rows, metrics, grouped=True)


def _recorded_null(run: Run, metric: str) -> bool:
    """The completed run wrote `metric` to metrics.json as null (undefined, e.g. one class)."""
    recorded = run.info.get("metrics") or {}
    return run.status == "completed" and metric in recorded and recorded[metric] is None


def metric_value(run: Run, metric: str) -> float | None:
    """A run's metric: its value, NaN when it recorded the metric as null (undefined), None when
    it has no such metric (or did not complete)."""
    if metric in run.metrics:
        return run.metrics[metric]
    return math.nan if _recorded_null(run, metric) else None


def mean_std(values: list[float]) -> tuple[float, float] | None:
    """(mean, sample std with n - 1 in the denominator; 0 for one value), None for no values."""
    if not values:
        return None
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return mean, std


def best_first_descending(column: str, table: Table) -> bool:
    """Whether the best value of a column is the largest: metric_registry's direction decides;
    config columns and metrics it does not know sort ascending."""
    return column in table.metric_columns and direction(column) == "max"


def sort_rows(table: Table, key: str | None, reverse: bool) -> None:
    """Sort in place, best first for metrics; runs without a value (failed runs) always last."""
    if key is None:
        return
    if key not in table.columns:
        raise MtlrecError(f"--sort {key}: no such column; columns: {', '.join(table.columns)}")
    descending = best_first_descending(key, table) != reverse

    def value(row: dict) -> Any:
        v = row.get(key)
        return v[0] if isinstance(v, tuple) else v

    present = [r for r in table.rows if _present(value(r))]
    missing = [r for r in table.rows if not _present(value(r))]
    numeric = all(isinstance(value(r), (int, float)) for r in present)
    present.sort(key=lambda r: value(r) if numeric else str(value(r)), reverse=descending)
    table.rows = present + missing


def _present(v: Any) -> bool:
    return v is not None and not (isinstance(v, float) and math.isnan(v))
