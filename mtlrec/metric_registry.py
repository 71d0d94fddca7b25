"""Every metric mtlrec reports, with its direction, in one place.

A metric key reads `{split}/{task}_{metric}{suffix}`: `val/ctr_auc`, `test/cvr_auc_entire`,
`val/mean_logloss`, `train/loss`. Early stopping, `mtlrec compare`'s sort and hyper-parameter
search all ask `direction(key)`, so no caller guesses a direction from a name's last token.

This module imports nothing heavy (no torch, no sklearn): `mtlrec compare` uses it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Direction = Literal["max", "min"]


@dataclass(frozen=True)
class Metric:
    name: str
    direction: Direction
    definition: str


METRICS: dict[str, Metric] = {
    m.name: m
    for m in (
        Metric("auc", "max", "ROC AUC over the whole split (NaN when it holds one class)"),
        Metric(
            "gauc",
            "max",
            "impression-weighted mean of per-group AUCs (groups with one class skipped)",
        ),
        Metric("logloss", "min", "mean binary cross-entropy of the predicted probabilities"),
        Metric("mse", "min", "mean squared error"),
        Metric("rmse", "min", "root mean squared error (sqrt of mse, in the label's units)"),
        Metric("mae", "min", "mean absolute error"),
        Metric(
            "loss",
            "min",
            "`{split}/loss`: the task-weighted objective sum_t w_t L_t the optimizer minimizes "
            "(w_t: the balancer's task weights in effect); `{split}/{task}_loss`: task t's mean "
            "loss L_t over its sample space (BCE with logits or squared error)",
        ),
    )
}

# Suffixes after the metric name: `_entire` is cvr scored over all impressions against the
# counterfactual label (the ESMM paper's "entire space").
SUFFIXES = ("_entire",)


@dataclass(frozen=True)
class MetricKey:
    split: str | None
    task: str | None
    metric: Metric
    suffix: str


def parse(key: str) -> MetricKey | None:
    """`val/cvr_auc_entire` -> (val, cvr, auc, _entire); None when no known metric ends the key."""
    split, _, rest = key.rpartition("/")
    suffix = next((s for s in SUFFIXES if rest.endswith(s)), "")
    if suffix:
        rest = rest[: -len(suffix)]
    task, _, name = rest.rpartition("_")
    if name not in METRICS:
        return None
    return MetricKey(split or None, task or None, METRICS[name], suffix)


def direction(key: str) -> Direction | None:
    """'max' if higher is better, 'min' if lower is better, None for a key that is no metric."""
    parsed = parse(key)
    return None if parsed is None else parsed.metric.direction


def docs_table() -> str:
    """The metric table of docs/metrics.md (tests check the doc holds exactly this)."""
    words = {"max": "higher is better", "min": "lower is better"}
    rows = ["| metric | direction | definition |", "|---|---|---|"]
    rows += [f"| `{m.name}` | {words[m.direction]} | {m.definition} |" for m in METRICS.values()]
    return "\n".join(rows)
