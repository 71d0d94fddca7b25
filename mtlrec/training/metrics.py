"""Metrics over a WHOLE split (never averaged per batch), named `{split}/{task}_{metric}`.

Binary tasks: auc, logloss, and the calibration metrics pcoc and ece (mtlrec.training.calibration;
not averaged into `mean_*`). Regression tasks: mse, rmse, mae. `{split}/mean_<metric>` averages a metric
over the DATASET's evaluation tasks (its tasks, or the `dataset.tasks` selection), each scored on
its own sample space, so every model on the same data averages the same tasks; model-specific
outputs (ESMM's ctcvr) keep their own columns and stay out of the mean. A model that cannot score a
dataset task (cvr_base predicts cvr only) averages the dataset tasks it scores. With
`metrics.weighted: true` (`weighted=True` here) auc, logloss, pcoc, mse, rmse and mae weigh each
row by its sample weight (the task's weight column, mtlrec.data.spec.DatasetSpec.weight_column):
AUC as scikit-learn's roc_auc_score(sample_weight=w), the others as weighted means; ece and gauc
stay unweighted. Directions and
definitions: mtlrec.metric_registry, docs/metrics.md. For funnel (click -> conversion) data, every model output
named ctr / cvr / ctcvr is also scored the ESMM paper's way: ctr and ctcvr on all impressions, cvr on
clicked impressions, and `cvr_*_entire` on all impressions against the counterfactual label
`conversion_if_clicked` when the data has it.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np

from mtlrec.data.spec import DatasetSpec, TaskSpec
from mtlrec.training.calibration import ECE_BINS, ece, pcoc, reliability_bins

log = logging.getLogger(__name__)

BINARY_METRICS = ("auc", "logloss")
CALIBRATION_METRICS = ("pcoc", "ece")  # binary tasks too; kept out of mean_*
_GAUC_SAID: set[tuple[str, str]] = set()  # (split, key) whose group counts were logged
REGRESSION_METRICS = ("mse", "rmse", "mae")


@dataclass(frozen=True)
class EvalTarget:
    task: TaskSpec
    suffix: str = ""  # e.g. "_entire": cvr scored over all impressions
    in_mean: bool = False  # one of the dataset's evaluation tasks: part of `mean_*`

    def key(self, metric: str) -> str:
        return f"{self.task.name}_{metric}{self.suffix}"


def eval_targets(
    loss_tasks: tuple[TaskSpec, ...],
    output_types: dict[str, str],
    spec: DatasetSpec,
    dataset_tasks: tuple[TaskSpec, ...] | None = None,
) -> list[EvalTarget]:
    """What a split is scored on: the trained tasks, funnel outputs, and the dataset's tasks
    (`dataset_tasks`, default all of the spec's tasks), which `mean_*` averages."""
    targets = _scored(loss_tasks, output_types, spec)
    evaluated = {t.name for t in (spec.tasks if dataset_tasks is None else dataset_tasks)}
    return [
        EvalTarget(t.task, t.suffix, in_mean=not t.suffix and t.task.name in evaluated)
        for t in targets
    ]


def _scored(
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


def metric_keys(split: str, targets: list[EvalTarget], gauc: bool = False) -> list[str]:
    """The keys `split_metrics` writes for these targets (checked against trainer.monitor)."""
    keys, means = [], []
    binary = (*BINARY_METRICS, "gauc") if gauc else BINARY_METRICS
    for target in targets:
        names = binary if target.task.type == "binary" else REGRESSION_METRICS
        keys += [f"{split}/{target.key(m)}" for m in names]
        if target.task.type == "binary":
            keys += [f"{split}/{target.key(m)}" for m in CALIBRATION_METRICS]
        if target.in_mean:
            means += [m for m in names if m not in means]
    return keys + [f"{split}/mean_{m}" for m in binary + REGRESSION_METRICS if m in means]


def auc(y: np.ndarray, p: np.ndarray) -> float:
    """ROC AUC; NaN when the rows hold a single class (AUC is undefined there).

    The Mann-Whitney form (rank sum of the positives, tied scores at their average rank), equal
    to the area under the ROC curve (tests/training/test_metrics.py checks it against
    scikit-learn's roc_auc_score); computed here so a run does not import scikit-learn (a second
    of every start-up).
    """
    if y.size == 0 or y.min() == y.max():
        return math.nan
    return gauc(y, p, np.zeros(y.shape[0], dtype=np.int64))[0]


def gauc(y: np.ndarray, p: np.ndarray, groups: np.ndarray) -> tuple[float, int, int]:
    """Group AUC: the impression-weighted mean of per-group ROC AUCs (e.g. per user), groups
    whose rows hold one class skipped. Returns (value, groups used, groups skipped).

    One vectorized pass (no loop over groups): rows sorted by (group, score), tied scores get
    their average rank within the group, and each group's AUC is its Mann-Whitney statistic
    (rank sum of the positives - n+ (n+ + 1) / 2) / (n+ n-).
    """
    if y.size == 0:
        return math.nan, 0, 0
    order = np.lexsort((p, groups))
    g, s, t = groups[order], p[order], y[order].astype(np.float64)
    n = len(g)
    new_group = np.r_[True, g[1:] != g[:-1]]
    group_id = np.cumsum(new_group) - 1
    position = np.arange(n) - np.flatnonzero(new_group)[group_id]  # 0-based, within the group
    new_run = new_group | np.r_[True, s[1:] != s[:-1]]  # a run of tied scores in one group
    run_id = np.cumsum(new_run) - 1
    starts = np.flatnonzero(new_run)
    ends = np.r_[starts[1:], n] - 1
    rank = ((position[starts] + position[ends]) / 2 + 1)[run_id]
    size = np.bincount(group_id).astype(np.float64)
    n_pos = np.bincount(group_id, weights=t)
    n_neg = size - n_pos
    rank_sum = np.bincount(group_id, weights=rank * t)
    valid = (n_pos > 0) & (n_neg > 0)
    if not valid.any():
        return math.nan, 0, int(size.size)
    aucs = (rank_sum[valid] - n_pos[valid] * (n_pos[valid] + 1) / 2) / (n_pos[valid] * n_neg[valid])
    value = float((aucs * size[valid]).sum() / size[valid].sum())
    return value, int(valid.sum()), int((~valid).sum())


def note_undefined_auc(
    split: str, target: EvalTarget, y: np.ndarray, undefined: dict[str, str] | None
) -> None:
    """AUC is null when a task's rows hold one class: say so once per run, split and task
    (naming them, the row count and why) and record it in `undefined` (metric key -> why), which
    the run writes to metrics.json as `undefined_metrics`. No `undefined`: warn every time."""
    key = f"{split}/{target.key('auc')}"
    if undefined is not None and key in undefined:
        return
    t = target.task
    if y.size == 0:
        why = f"no row satisfies where: {t.where}" if t.where else "the split is empty"
    else:
        why = f"all {y.size:,} rows have label {t.label}={int(y[0])}"
    if undefined is not None:
        undefined[key] = f"{why} (AUC needs both classes)"
    log.warning("%s is null: %s (AUC needs both classes)", key, why)


def weighted_auc(y: np.ndarray, p: np.ndarray, w: np.ndarray) -> float:
    """ROC AUC with row weights (scikit-learn's roc_auc_score with sample_weight=w): the area
    under the curve of the weighted true / false positive rates over the distinct thresholds
    (tied scores move together, a diagonal step). NaN without positive or negative weight."""
    y, w = y.astype(np.float64), w.astype(np.float64)
    pos_w, neg_w = float((w * y).sum()), float((w * (1 - y)).sum())
    if not (pos_w > 0 and neg_w > 0):
        return math.nan
    order = np.argsort(-p, kind="stable")
    s, tp, fp = p[order], np.cumsum((w * y)[order]), np.cumsum((w * (1 - y))[order])
    last = np.r_[s[1:] != s[:-1], True]  # the last row of each run of tied scores
    tpr = np.r_[0.0, tp[last] / pos_w]
    fpr = np.r_[0.0, fp[last] / neg_w]
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))


def logloss(y: np.ndarray, p: np.ndarray, w: np.ndarray | None = None) -> float:
    """Mean binary log loss (probabilities clipped to [1e-7, 1 - 1e-7]); weighted by `w`."""
    if y.size == 0 or (w is not None and not w.sum() > 0):
        return math.nan
    p = np.clip(p.astype(np.float64), 1e-7, 1 - 1e-7)
    losses = -(y * np.log(p) + (1 - y) * np.log1p(-p))
    return float(np.mean(losses) if w is None else np.sum(w * losses) / np.sum(w))


def _mean(values: np.ndarray, w: np.ndarray | None) -> float:
    if values.size == 0 or (w is not None and not w.sum() > 0):
        return math.nan
    return float(np.mean(values) if w is None else np.sum(w * values) / np.sum(w))


def row_weights(
    labels: np.ndarray, spec: DatasetSpec, task: TaskSpec, weighted: bool
) -> np.ndarray | None:
    """The sample weights of a task's rows (metrics.weighted), None when unweighted."""
    column = spec.weight_column(task) if weighted else None
    return None if column is None else labels[:, spec.label_index(column)].astype(np.float64)


def split_metrics(
    split: str,
    predictions: dict[str, np.ndarray],
    labels: np.ndarray,
    targets: list[EvalTarget],
    spec: DatasetSpec,
    loss_tasks: tuple[TaskSpec, ...],
    groups: np.ndarray | None = None,
    undefined: dict[str, str] | None = None,
    ece_bins: int = ECE_BINS,
    reliability: dict[str, dict[str, list[float]]] | None = None,
    weighted: bool = False,
) -> dict[str, float]:
    """Metrics of one split from its predictions (probabilities for binary outputs); with
    `groups` (metrics.gauc_by: a group id per row), also GAUC per binary target. `undefined`
    collects the run's null AUCs (note_undefined_auc). `reliability`, when given, receives each
    binary target's equal-mass bins (key: `{task}{suffix}`). `weighted` (metrics.weighted):
    sample-weighted auc, logloss, pcoc and regression metrics."""
    out: dict[str, float] = {}
    for target in targets:
        t = target.task
        y = labels[:, spec.label_index(t.label)].astype(np.float64)
        p = predictions[t.output_name].astype(np.float64)
        w = row_weights(labels, spec, t, weighted)
        g = groups
        if t.where is not None:
            rows = labels[:, spec.label_index(t.where)] == 1
            y, p = y[rows], p[rows]
            w = None if w is None else w[rows]
            g = None if groups is None else groups[rows]
        if t.type == "binary":
            out[f"{split}/{target.key('auc')}"] = auc(y, p) if w is None else weighted_auc(y, p, w)
            if y.size == 0 or y.min() == y.max():
                note_undefined_auc(split, target, y, undefined)
            out[f"{split}/{target.key('logloss')}"] = logloss(y, p, w)
            out[f"{split}/{target.key('pcoc')}"] = pcoc(y, p) if w is None else pcoc(w * y, w * p)
            out[f"{split}/{target.key('ece')}"] = ece(y, p, ece_bins)
            if reliability is not None and y.size:
                name = f"{t.name}{target.suffix}"
                reliability[name] = reliability_bins(y, p, ece_bins)
            if g is not None:
                value, used, skipped = gauc(y, p, g)
                out[f"{split}/{target.key('gauc')}"] = value
                if (split, target.key("gauc")) not in _GAUC_SAID:  # once a run, not every epoch
                    _GAUC_SAID.add((split, target.key("gauc")))
                    log.info(
                        "%s %s: GAUC over %s groups (%s with one class skipped)",
                        split,
                        target.key("gauc"),
                        f"{used:,}",
                        f"{skipped:,}",
                    )
        else:
            err = p - y
            mse = _mean(err**2, w)
            out[f"{split}/{target.key('mse')}"] = mse
            out[f"{split}/{target.key('rmse')}"] = math.sqrt(mse)  # in the label's own units
            out[f"{split}/{target.key('mae')}"] = _mean(np.abs(err), w)
    for metric in (*BINARY_METRICS, "gauc", *REGRESSION_METRICS):
        values = [
            out[f"{split}/{t.key(metric)}"]
            for t in targets
            if t.in_mean and f"{split}/{t.key(metric)}" in out
        ]
        finite = [v for v in values if math.isfinite(v)]
        if values:
            out[f"{split}/mean_{metric}"] = float(np.mean(finite)) if finite else math.nan
    return out
