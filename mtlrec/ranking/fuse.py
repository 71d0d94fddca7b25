"""`mtlrec fuse`: search fusion weights of each run's task scores on val, report them on test.

Per run: score val and test with the checkpoint (ranking.scores), search each form's weights on
val (ranking.search), take the form and weights with the best val value, score test once with
them, and write RUN/fusion/<name>.json (+ plots). Each single fused output's own score is the
baseline; so is the equal-weight fusion. Several runs are compared at their best fusion.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from mtlrec.errors import MtlrecError
from mtlrec.ranking import targets
from mtlrec.ranking.forms import fuse
from mtlrec.ranking.record import SCHEMA_VERSION, fusion_path, write_record
from mtlrec.ranking.scores import RunScores, load_scores
from mtlrec.ranking.search import Evaluate, SearchConfig, Trial, best_trial, run_search
from mtlrec.runs.records import find_run_dirs, read_run


@dataclass(frozen=True)
class TargetOptions:
    metric: str = "auc"
    utility: str | None = None
    group_by: str | None = None
    k: int = 10
    task: str | None = None
    constraint: str | None = None


@dataclass(frozen=True)
class FuseOptions:
    forms: tuple[str, ...]
    search: SearchConfig
    target: TargetOptions
    checkpoint: str = "best.pt"
    tasks: list[str] | None = None
    name: str = "fusion"
    plot: bool = True
    command: str = ""


def build_target(options: TargetOptions, scores: RunScores) -> targets.Target:
    spec = scores.spec
    if options.metric == "gauc" and not options.group_by:
        raise MtlrecError("--metric gauc needs --group-by FIELD (e.g. a user id field)")
    if options.metric == "task_auc" and not options.task:
        raise MtlrecError("--metric task_auc needs --task TASK (e.g. --task ctcvr)")
    if options.k < 1:
        raise MtlrecError(f"--k must be >= 1, got {options.k}")
    return targets.Target(
        options.metric,
        targets.parse_utility(options.utility, spec),
        options.group_by,
        options.k,
        targets.task_rows(spec, options.task, "--task") if options.task else None,
        targets.parse_constraint(options.constraint, spec),
    )


def check_run(run_dir: Path, name: str) -> Path:
    """A finished run whose fusion `name` does not exist yet; returns the record's path."""
    run = read_run(run_dir)
    if run.status != "completed":
        raise MtlrecError(
            f"{run_dir}: the run is {run.status}; fuse a run that completed (its best.pt is final)"
        )
    path = fusion_path(run_dir, name)
    if path.exists():
        raise MtlrecError(
            f"{path}: already exists; fusion results are never replaced: pass another --name"
        )
    return path


def _value(target: targets.Target, split, score: torch.Tensor) -> float:
    return targets.value(target, split, score.numpy())


def fuse_run(run_dir: Path, options: FuseOptions) -> dict[str, Any]:
    """Search, test, write the record; returns it."""
    path = check_run(run_dir, options.name)
    scores = load_scores(run_dir, options.checkpoint, options.tasks, options.target.group_by)
    target = build_target(options.target, scores)
    val, test = scores.splits["val"], scores.splits["test"]
    searched: dict[str, tuple[list[Trial], Trial]] = {}
    for form in options.forms:
        evaluate = Evaluate(form, target, val)
        trials = run_search(replace(options.search, form=form), len(scores.tasks), evaluate)
        searched[form] = (trials, best_trial(trials))
    form = max(searched, key=lambda f: searched[f][1].value)  # first form on ties
    trials, best = searched[form]
    test_score = fuse(form, test.probs, best.weights)
    record: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "run_dir": str(run_dir),
        "model": scores.model_name,
        "checkpoint": scores.checkpoint,
        "checkpoint_sha256": scores.checkpoint_sha256,
        "form": form,
        "tasks": scores.tasks,
        "weights": dict(zip(scores.tasks, best.weights, strict=True)),
        "weight_shares": _shares(scores.tasks, best.weights),
        "target": target.describe(),
        "val": best.value,
        "test": _value(target, test, test_score),
        "baselines": _baselines(target, scores),
        "forms": {f: {"val": b.value, "weights": b.weights} for f, (_, b) in searched.items()},
        "constraint": _constraint(target, scores, best, test_score),
        "search": {**vars(options.search), "form": list(options.forms), "trials_run": len(trials)},
        "trials": [vars(t) for t in trials],
        "command": options.command,
        "created_at": dt.datetime.now().isoformat(timespec="seconds"),
    }
    write_record(path, record)
    record["path"] = str(path)
    record["plots"] = _plots(trials, scores.tasks, target.name, form, path) if options.plot else []
    return record


def _shares(tasks: list[str], weights: list[float]) -> dict[str, float]:
    total = sum(weights)
    return {t: (w / total if total > 0 else math.nan) for t, w in zip(tasks, weights, strict=True)}


def _baselines(target: targets.Target, scores: RunScores) -> dict[str, dict[str, float]]:
    """Each fused output alone, and all outputs at equal weight (sum form), on val and test."""
    out = {}
    for j, task in enumerate(scores.tasks):
        out[task] = {
            name: _value(target, split, split.probs[:, j]) for name, split in scores.splits.items()
        }
    equal = [1.0] * len(scores.tasks)
    out["equal_sum"] = {
        name: _value(target, split, fuse("sum", split.probs, equal))
        for name, split in scores.splits.items()
    }
    return out


def _constraint(target, scores: RunScores, best: Trial, test_score) -> dict | None:
    if target.constraint is None:
        return None
    task = target.constraint[0]
    test = scores.splits["test"]
    floor = targets.constraint_floor(target, test)
    value = targets.task_auc(test, task, test_score.numpy())
    return {
        "task": task.name,
        "val": {
            "auc": best.constraint_value,
            "floor": targets.constraint_floor(target, scores.splits["val"]),
        },
        "test": {"auc": value, "floor": floor, "met": floor is not None and value >= floor},
    }


def _plots(trials, tasks, metric, form, path: Path) -> list[str]:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return []
    from mtlrec.ranking.plots import write_fusion_plots

    return [str(p) for p in write_fusion_plots(trials, tasks, metric, form, path.with_suffix(""))]


def fuse_runs(paths: list[str], options: FuseOptions) -> list[dict[str, Any]]:
    """Every run dir under `paths`, each searched on its own; checked before any search."""
    run_dirs = find_run_dirs(list(paths))
    if not run_dirs:
        raise MtlrecError(f"{' '.join(paths)}: no run dir found (a dir holding metrics.json)")
    for run_dir in run_dirs:
        check_run(run_dir, options.name)
    return [fuse_run(run_dir, options) for run_dir in run_dirs]
