"""Metrics over a WHOLE split (never averaged per batch), named `{split}/{task}_{metric}`.

Binary tasks: auc, logloss. Regression tasks: mse, mae. `{split}/mean_<metric>` averages a metric
over the tasks the model is trained on. For funnel (click -> conversion) data, every model output
named ctr / cvr / ctcvr is also scored the ESMM paper's way: ctr and ctcvr on all impressions, cvr on
clicked impressions, and `cvr_*_entire` on all impressions against the counterfactual label
`conversion_if_clicked` when the data has it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from sklearn.metrics import roc_auc_score

from mtlrec.data.spec import DatasetSpec, TaskSpec

BINARY_METRICS = ("auc", "logloss")
REGRESSION_METRICS = ("mse", "mae")
HIGHER_IS_BETTER = {"auc"}


@dataclass(frozen=True)
class EvalTarget:
    task: TaskSpec
    suffix: str = ""  # e.g. "_entire": cvr scored over all impressions

    def key(self, metric: str) -> str:
        return f"{self.task.name}_{metric}{self.suffix}"


def eval_targets(
    loss_tasks: tuple[TaskSpec, ...], output_types: dict[str, str], spec: DatasetSpec
) -> list[EvalTarget]:
    targets = [EvalTarget(t) for t in loss_tasks]
    f = spec.funnel
    if f is not None:
        extra = [
            ("ctr", EvalTarget(TaskSpec("ctr", f.click))),
            ("cvr", EvalTarget(TaskSpec("cvr", f.conversion, where=f.click))),
            ("ctcvr", EvalTarget(TaskSpec("ctcvr", f.conversion))),
        ]
        if f.conversion_if_clicked:
            extra.append(("cvr", EvalTarget(TaskSpec("cvr", f.conversion_if_clicked), "_entire")))
        seen = {(t.task.name, t.suffix) for t in targets}
        for output, target in extra:
            if (
                output_types.get(output) == "binary"
                and (target.task.name, target.suffix) not in seen
            ):
                targets.append(target)
                seen.add((target.task.name, target.suffix))
    return targets


def auc(y: np.ndarray, p: np.ndarray) -> float:
    """ROC AUC; NaN when the rows hold a single class (AUC is undefined there)."""
    if y.size == 0 or y.min() == y.max():
        return math.nan
    return float(roc_auc_score(y, p))


def logloss(y: np.ndarray, p: np.ndarray) -> float:
    if y.size == 0:
        return math.nan
    p = np.clip(p.astype(np.float64), 1e-7, 1 - 1e-7)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log1p(-p)))


def split_metrics(
    split: str,
    predictions: dict[str, np.ndarray],
    labels: np.ndarray,
    targets: list[EvalTarget],
    spec: DatasetSpec,
    loss_tasks: tuple[TaskSpec, ...],
) -> dict[str, float]:
    """Metrics of one split from its predictions (probabilities for binary outputs)."""
    out: dict[str, float] = {}
    for target in targets:
        t = target.task
        y = labels[:, spec.label_index(t.label)].astype(np.float64)
        p = predictions[t.output_name].astype(np.float64)
        if t.where is not None:
            rows = labels[:, spec.label_index(t.where)] == 1
            y, p = y[rows], p[rows]
        if t.type == "binary":
            out[f"{split}/{target.key('auc')}"] = auc(y, p)
            out[f"{split}/{target.key('logloss')}"] = logloss(y, p)
        else:
            err = p - y
            out[f"{split}/{target.key('mse')}"] = float(np.mean(err**2)) if y.size else math.nan
            out[f"{split}/{target.key('mae')}"] = (
                float(np.mean(np.abs(err))) if y.size else math.nan
            )
    trained = {t.name for t in loss_tasks}
    for metric in BINARY_METRICS + REGRESSION_METRICS:
        values = [
            out[f"{split}/{t.key(metric)}"]
            for t in targets
            if t.task.name in trained and not t.suffix and f"{split}/{t.key(metric)}" in out
        ]
        finite = [v for v in values if math.isfinite(v)]
        if values:
            out[f"{split}/mean_{metric}"] = float(np.mean(finite)) if finite else math.nan
    return out
