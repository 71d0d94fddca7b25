"""What multi-task learning gained per task: `mtlrec compare DIR... --baseline model=single_task`.

The runs the baseline filter selects (any `--filter`-style KEY=VALUE, e.g. model=single_task)
are the baseline; every other configuration's runs are paired with the baseline run of the same
seed. For each metric column, the delta column `Δ<metric>` holds the mean ± sample std over the
paired seeds of (run - baseline): positive is better for metrics where higher is better.

Negative transfer (`negative_transfer` column): a metric whose mean delta is worse than the
baseline beyond noise. Noise is the half-width of the 95% confidence interval of the mean paired
delta, t(0.975, n - 1) x s / sqrt(n), with s the sample std of the deltas over the n paired seeds
(Student's t, as the seeds are few): the mark says the whole interval lies on the worse side of
zero. With one paired seed there is no estimate of the noise and nothing is marked.
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass
from typing import Any

from mtlrec.errors import MtlrecError
from mtlrec.metric_registry import direction
from mtlrec.report.keys import SEED_KEYS, differing_keys, filter_runs, short_names
from mtlrec.report.table import Table
from mtlrec.runs.records import Run

# Student's t quantile t(0.975, df) for df = 1..30; 1.96 beyond.
T_975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
         2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
         2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)  # fmt: skip
NEGATIVE = "negative_transfer"


def t_975(df: int) -> float:
    return T_975[df - 1] if df <= len(T_975) else 1.96


@dataclass(frozen=True)
class Delta:
    mean: float
    std: float
    n: int

    @property
    def noise(self) -> float:
        """Half-width of the 95% confidence interval of the mean (NaN for one seed)."""
        return t_975(self.n - 1) * self.std / math.sqrt(self.n) if self.n > 1 else math.nan

    def worse(self, metric: str) -> bool:
        """Worse than the baseline beyond noise, in the metric's own direction."""
        if not self.n > 1 or not math.isfinite(self.noise):
            return False
        signed = self.mean if direction(metric) != "min" else -self.mean
        return signed < -self.noise


def split_baseline(runs: list[Run], filters: list[str]) -> tuple[dict[Any, Run], list[Run]]:
    """(seed -> baseline run, the other runs). A seed with two baseline runs is refused."""
    names = short_names(differing_keys(runs))
    baseline = filter_runs(filters, runs, names)
    if not baseline:
        raise MtlrecError(f"--baseline {' '.join(filters)}: no compared run matches")
    by_seed: dict[Any, Run] = {}
    for run in baseline:
        seed = seed_of(run)
        if seed in by_seed:
            raise MtlrecError(
                f"--baseline {' '.join(filters)}: selects {by_seed[seed].path} and {run.path}, "
                f"both seed {seed}; add a KEY=VALUE that keeps one configuration"
            )
        by_seed[seed] = run
    chosen = {id(r) for r in baseline}
    return by_seed, [r for r in runs if id(r) not in chosen]


def seed_of(run: Run) -> Any:
    return run.config.get("seed", run.info.get("seed"))


def paired_delta(members: list[Run], baseline: dict[Any, Run], metric: str) -> Delta | None:
    deltas = []
    for run in members:
        base = baseline.get(seed_of(run))
        if base is None or metric not in run.metrics or metric not in base.metrics:
            continue
        deltas.append(run.metrics[metric] - base.metrics[metric])
    deltas = [d for d in deltas if math.isfinite(d)]
    if not deltas:
        return None
    std = statistics.stdev(deltas) if len(deltas) > 1 else 0.0
    return Delta(statistics.fmean(deltas), std, len(deltas))


def group_members(runs: list[Run]) -> list[list[Run]]:
    """The runs of each seed group, in the order report/table.py lists its grouped rows."""
    keys = [k for k in differing_keys(runs) if k not in SEED_KEYS]
    groups: dict[str, list[Run]] = {}
    for run in runs:
        groups.setdefault(json.dumps([run.config.get(k) for k in keys], default=str), []).append(
            run
        )
    return list(groups.values())


def add_gain_columns(table: Table, runs: list[Run], filters: list[str]) -> None:
    """Add `Δ<metric>` (mean, std) after each metric and `negative_transfer` at the end of a
    seed-grouped table, in place;
    the baseline's own row gets no delta and is marked `(baseline)`."""
    baseline, _ = split_baseline(runs, filters)
    base_ids = {id(r) for r in baseline.values()}
    metrics = list(table.metric_columns)
    # each Δ column right after its metric, where the eye compares them
    columns = []
    for c in table.columns:
        columns += [c, f"Δ{c}"] if c in metrics else [c]
    table.columns = [*columns, NEGATIVE]
    for row, members in zip(table.rows, group_members(runs), strict=True):
        is_base = all(id(r) in base_ids for r in members)
        row["baseline"] = is_base
        marks = []
        for m in metrics:
            delta = None if is_base else paired_delta(members, baseline, m)
            row[f"Δ{m}"] = None if delta is None else (delta.mean, delta.std)
            if delta is not None and delta.worse(m):
                marks.append(m)
        row[NEGATIVE] = ", ".join(marks) if marks else ("(baseline)" if is_base else "")
