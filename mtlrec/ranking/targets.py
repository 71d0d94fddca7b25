"""What a fusion is judged by (`mtlrec fuse --metric ...`).

    auc       utility AUC of the fused score over all rows (ranking.metrics.utility_auc)
    gauc      the same within groups (--group-by FIELD), impression-weighted
    ndcg      NDCG@k (--k) within groups (--group-by; without it, the split is one list)
    task_auc  ROC AUC of the fused score for one task (--task, e.g. ctcvr): its label on its
              sample space (cvr: clicked rows; ctcvr: conversions over all impressions)

The utility of a row is sum_label w_label * label (--utility click=1,conversion=10); by default
every binary task's label weighs 1. `--constraint TASK=R` keeps only weights whose fused score
has a TASK AUC >= R x the best TASK AUC of any single fused output on the same split (e.g.
maximise CTCVR AUC while CTR AUC stays >= 0.99 x CTR's own); a weight vector that breaks it is
infeasible: it never becomes the best one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from mtlrec.data.spec import DatasetSpec
from mtlrec.errors import MtlrecError
from mtlrec.ranking.metrics import ndcg_at_k, utility_auc, utility_gauc
from mtlrec.ranking.scores import SplitScores
from mtlrec.training.metrics import auc

METRICS = ("auc", "gauc", "ndcg", "task_auc")


@dataclass(frozen=True)
class TaskRows:
    """A task as fusion scores it: label column, and the column selecting its rows (or None)."""

    name: str
    label: str
    where: str | None = None


@dataclass(frozen=True)
class Target:
    metric: str
    utility: dict[str, float] = field(default_factory=dict)  # label -> weight
    group_by: str | None = None
    k: int = 10
    task: TaskRows | None = None  # task_auc's task
    constraint: tuple[TaskRows, float] | None = None  # (task, ratio of its best single AUC)

    @property
    def name(self) -> str:
        if self.metric == "task_auc":
            assert self.task is not None
            return f"{self.task.name}_auc"
        return f"ndcg@{self.k}" if self.metric == "ndcg" else f"utility_{self.metric}"

    def describe(self) -> dict:
        out: dict = {"metric": self.name}
        if self.metric != "task_auc":
            out["utility"] = self.utility
        if self.group_by:
            out["group_by"] = self.group_by
        if self.constraint:
            task, ratio = self.constraint
            out["constraint"] = f"{task.name}_auc >= {ratio:g} x best single {task.name}_auc"
        return out


def task_rows(spec: DatasetSpec, name: str, option: str) -> TaskRows:
    """A task by name (the dataset's tasks; ctr/cvr/ctcvr on funnel data), or a bare label."""
    known = {t.name: TaskRows(t.name, t.label, t.where) for t in spec.tasks}
    f = spec.funnel
    if f is not None:
        known.setdefault("ctr", TaskRows("ctr", f.click))
        known.setdefault("cvr", TaskRows("cvr", f.conversion, f.click))
        known.setdefault("ctcvr", TaskRows("ctcvr", f.conversion))
    if name in known:
        return known[name]
    if name in spec.labels:
        return TaskRows(name, name)
    raise MtlrecError(
        f"{option} {name}: not a task or label of dataset '{spec.name}'; "
        f"use one of {sorted(known) + list(spec.labels)}"
    )


def parse_utility(text: str | None, spec: DatasetSpec) -> dict[str, float]:
    """`click=1,conversion=10` -> {label: weight}; None: weight 1 per binary task's label."""
    if not text:
        labels = [t.label for t in spec.tasks if t.type == "binary"]
        return {label: 1.0 for label in dict.fromkeys(labels)}
    out: dict[str, float] = {}
    for part in text.split(","):
        label, sep, value = part.partition("=")
        label = label.strip()
        try:
            weight = float(value)
        except ValueError:
            weight = math.nan
        if not sep or not math.isfinite(weight) or weight < 0:
            raise MtlrecError(
                f"--utility {text}: '{part}' is not LABEL=WEIGHT with a weight >= 0, "
                "e.g. --utility click=1,conversion=10"
            )
        if label not in spec.labels:
            raise MtlrecError(
                f"--utility {text}: '{label}' is not a label of dataset '{spec.name}'; "
                f"labels: {list(spec.labels)}"
            )
        out[label] = weight
    if not any(out.values()):
        raise MtlrecError(f"--utility {text}: every weight is 0; give some label a weight > 0")
    return out


def parse_constraint(text: str | None, spec: DatasetSpec) -> tuple[TaskRows, float] | None:
    if not text:
        return None
    name, sep, value = text.partition("=")
    try:
        ratio = float(value)
    except ValueError:
        ratio = math.nan
    if not sep or not 0 < ratio <= 1:
        raise MtlrecError(
            f"--constraint {text}: expected TASK=RATIO with 0 < RATIO <= 1, e.g. ctr=0.99"
        )
    return task_rows(spec, name.strip(), "--constraint"), ratio


def task_auc(split: SplitScores, task: TaskRows, score: np.ndarray) -> float:
    y = split.labels[task.label]
    if task.where is not None:
        rows = split.labels[task.where] == 1
        y, score = y[rows], score[rows]
    return auc(y, score)


def utility(split: SplitScores, weights: dict[str, float]) -> np.ndarray:
    return sum((w * split.labels[label] for label, w in weights.items()), np.zeros(len(split)))


def value(target: Target, split: SplitScores, score: torch.Tensor | np.ndarray) -> float:
    """The target metric of a fused score on one split."""
    s = score.numpy() if isinstance(score, torch.Tensor) else score
    if target.metric == "task_auc":
        assert target.task is not None
        return task_auc(split, target.task, s)
    u = utility(split, target.utility)
    if target.metric == "auc":
        return utility_auc(u, s)
    if target.metric == "gauc":
        assert split.groups is not None
        return utility_gauc(u, s, split.groups)
    return ndcg_at_k(u, s, split.groups, target.k)


def constraint_floor(target: Target, split: SplitScores) -> float | None:
    """The constrained task's AUC a fused score must reach on this split (None: no constraint):
    the ratio times the best AUC of any single fused output for that task."""
    if target.constraint is None:
        return None
    task, ratio = target.constraint
    best = max(
        task_auc(split, task, split.probs[:, j].numpy()) for j in range(split.probs.shape[1])
    )
    return ratio * best
