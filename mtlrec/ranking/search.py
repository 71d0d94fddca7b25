"""The weight search: each trial fuses the val predictions with one weight vector and scores it.

`optuna` (default): Optuna's TPE sampler, seeded (`--seed`), `--trials` trials, each weight drawn
from [low, high]. `grid`: every vector of `--grid-steps` evenly spaced values per weight (the
all-zero vector left out). A trial that breaks the target's constraint is infeasible and is never
the best; the best is the feasible trial with the highest val value (the first such on ties).
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from mtlrec.errors import MtlrecError
from mtlrec.ranking import targets
from mtlrec.ranking.forms import fuse
from mtlrec.ranking.scores import SplitScores

SEARCHES = ("optuna", "grid")


@dataclass(frozen=True)
class SearchConfig:
    form: str
    method: str = "optuna"
    trials: int = 100
    seed: int = 0
    low: float = 0.0
    high: float = 1.0
    grid_steps: int = 11


@dataclass
class Trial:
    number: int
    weights: list[float]
    value: float  # the target on val
    feasible: bool = True
    constraint_value: float | None = None  # the constrained task's val AUC


class Evaluate:
    """weights -> Trial on the val split (the constraint's floor computed once)."""

    def __init__(self, form: str, target: targets.Target, val: SplitScores):
        self.form, self.target, self.val = form, target, val
        self.floor = targets.constraint_floor(target, val)
        self.trials: list[Trial] = []

    def __call__(self, weights: list[float]) -> Trial:
        score = fuse(self.form, self.val.probs, weights).numpy()
        value = targets.value(self.target, self.val, score)
        trial = Trial(len(self.trials), [float(w) for w in weights], value)
        if self.floor is not None and self.target.constraint is not None:
            trial.constraint_value = targets.task_auc(self.val, self.target.constraint[0], score)
            trial.feasible = trial.constraint_value >= self.floor
        self.trials.append(trial)
        return trial


def run_search(config: SearchConfig, n_tasks: int, evaluate: Evaluate) -> list[Trial]:
    if config.method == "grid":
        _grid(config, n_tasks, evaluate)
    else:
        _optuna(config, n_tasks, evaluate)
    return evaluate.trials


def best_trial(trials: list[Trial]) -> Trial:
    feasible = [t for t in trials if t.feasible and math.isfinite(t.value)]
    if not feasible:
        raise MtlrecError(
            "no weight vector met the constraint on val (or the target is undefined there: one "
            "utility level); loosen --constraint, widen --bounds or run more --trials"
        )
    return max(feasible, key=lambda t: (t.value, -t.number))


def _grid(config: SearchConfig, n_tasks: int, evaluate: Callable[[list[float]], Trial]) -> None:
    values = np.linspace(config.low, config.high, config.grid_steps).tolist()
    for weights in itertools.product(values, repeat=n_tasks):
        if any(w != 0 for w in weights):
            evaluate(list(weights))


def _optuna(config: SearchConfig, n_tasks: int, evaluate: Evaluate) -> None:
    try:
        import optuna
    except ImportError:
        raise MtlrecError(
            'mtlrec fuse --search optuna needs optuna >= 4: pip install "mtlrec[tune]" '
            "(or use --search grid)"
        ) from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.getLogger("optuna").setLevel(logging.WARNING)

    def objective(trial) -> float:
        weights = [trial.suggest_float(f"w{j}", config.low, config.high) for j in range(n_tasks)]
        if not any(weights):
            return -1.0  # the all-zero vector ranks nothing
        done = evaluate(weights)
        if not math.isfinite(done.value):
            return -1.0
        # An infeasible vector is steered away from, by how far it falls short of the floor.
        if not done.feasible and evaluate.floor is not None and done.constraint_value is not None:
            return done.value - 1.0 - (evaluate.floor - done.constraint_value)
        return done.value

    sampler = optuna.samplers.TPESampler(seed=config.seed)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    study.optimize(objective, n_trials=config.trials)
