"""Per-task best epochs (`trainer.keep_best_per_task=true`) and per-task early stopping
(`trainer.early_stopping=all_tasks`).

Each of the dataset's evaluation tasks (the tasks `mean_*` averages: ESMM's ctr and cvr, not its
ctcvr product) is watched on its own validation metric, `val/<task>_auc` for a binary task and
`val/<task>_mse` for a regression task. The epoch where it is best keeps the weights, written by
the run as `checkpoints/best_<task>.pt` (a second name of that epoch's last.pt); after training,
the test split is scored once per task with that task's weights (`metrics.json`:
`per_task_best`). With `early_stopping=all_tasks`, training stops once every task has gone
`trainer.patience` epochs without improving. The state is a function of the history, so a
resumed run replays it.

The weights a task keeps are a copy in host memory, except the big tables whose checkpoints are
table files (training/best_files.py): those are a placeholder, and the task's best epoch's files
(the chain its best_<task>.pt names) hold them. So the memory kept per task is the dense part of
the model, not T copies of every table; at the test each task's tables get back the rows that
differ between the files of the epoch they hold and the task's (a memory map), and the monitored
best weights are put back the same way.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import torch

from mtlrec.errors import MtlrecError
from mtlrec.training import best_files
from mtlrec.training.best_files import BestFiles
from mtlrec.training.checkpoint import MODEL_KEY, TrainState, load_checkpoint
from mtlrec.training.evaluator import strip_gates
from mtlrec.training.metrics import EvalTarget
from mtlrec.training.monitoring import EarlyStopping

PROTOCOL = "per_task_best: each task's test metrics with the weights of its own best val epoch"


def watched_metric(target: EvalTarget) -> tuple[str, str]:
    """(val metric key, max|min) a task is watched on."""
    if target.task.type == "binary":
        return f"val/{target.key('auc')}", "max"
    return f"val/{target.key('mse')}", "min"


class PerTaskBest:
    """Per task: its own EarlyStopping on its watched metric, and the weights of its best epoch."""

    def __init__(self, targets: list[EvalTarget], patience: int | None, keeps: bool = True):
        self.keeps = keeps  # keep each task's weights (keep_best_per_task), or only its epoch
        watched = [t for t in targets if t.in_mean] or [t for t in targets if not t.suffix]
        self.metrics: dict[str, str] = {}
        self.stoppers: dict[str, EarlyStopping] = {}
        for target in watched:
            key, mode = watched_metric(target)
            self.metrics[target.task.name] = key
            self.stoppers[target.task.name] = EarlyStopping(mode, patience)
        self.states: dict[str, dict[str, torch.Tensor]] = {}
        self.improved: list[str] = []  # the tasks the latest epoch improved

    @property
    def tasks(self) -> list[str]:
        return list(self.metrics)

    def update(self, epoch: int, val_metrics: dict[str, Any]) -> list[str]:
        """Record an epoch's val metrics; the tasks whose best it is."""
        self.improved = [
            task
            for task, key in self.metrics.items()
            if self.stoppers[task].update(epoch, float(val_metrics.get(key, float("nan"))))
        ]
        return self.improved

    def keep(self, model: torch.nn.Module, files: BestFiles | None = None) -> None:
        """Keep the current weights for each task the latest epoch improved: copied to host
        memory, but the tables `files` holds as placeholders (that epoch's checkpoint files keep
        them; the run's recorder marks them for the task: BestFiles.mark_task)."""
        if not self.keeps:
            return
        held = files.keys if files is not None else frozenset()
        for task in self.improved:
            self.states[task] = {
                k: best_files.placeholder(v) if k in held else v.detach().to("cpu", copy=True)
                for k, v in model.state_dict().items()
            }

    def replay(self, history: list[dict[str, Any]]) -> None:
        """Rebuild the best epochs and stall counts from a resumed run's history (the weights of
        each best epoch come back from checkpoints/best_<task>.pt: `states`)."""
        for row in history:
            self.update(int(row["epoch"]), row)
        self.improved = []

    @property
    def all_stalled(self) -> bool:
        return bool(self.stoppers) and all(s.should_stop for s in self.stoppers.values())

    def summary(self) -> dict[str, dict[str, Any]]:
        return {
            task: {"metric": self.metrics[task], "epoch": s.best_epoch, "value": s.best_value}
            for task, s in self.stoppers.items()
        }


def checkpoint_name(task: str) -> str:
    return f"best_{task}.pt"


class Tested(Protocol):
    """What test_per_task needs of the trainer (training/trainer.py's Trainer)."""

    @property
    def model(self) -> torch.nn.Module: ...

    @property
    def per_task(self) -> PerTaskBest | None: ...

    @property
    def state(self) -> TrainState:  # its best_state: the monitored best weights fit loaded
        ...

    def evaluate(self, split: Any, name: str) -> dict[str, float]: ...


def test_per_task(
    trainer: Tested,
    test: Any,
    history: list[dict[str, Any]],
    checkpoints: Path,
    files: BestFiles | None,
) -> dict:
    """metrics.json's `per_task_best`: each task's val metrics at its own best epoch and its test
    metrics with that epoch's weights (kept in memory, or from checkpoints/best_<task>.pt for an
    epoch before a resume). The monitored best weights (what fit loaded) are put back after."""
    assert trainer.per_task is not None
    monitored = trainer.state.best_state
    # the chain of files the tables hold now: the best epoch's, which fit loaded back
    holding = files.best_chain if best_files.by_files(monitored) and files is not None else []
    tasks = {}
    for task, best in trainer.per_task.summary().items():
        if not best["epoch"]:
            continue  # its metric was never defined (e.g. one class in val)
        state, chain = task_weights(trainer.per_task, task, checkpoints, files)
        holding = best_files.load(trainer.model, state, files, chain, holding)
        row = next(r for r in history if r["epoch"] == best["epoch"])
        test_metrics = strip_gates(trainer.evaluate(test, "test"))
        prefix = (f"val/{task}_", f"test/{task}_")
        tasks[task] = {
            "epoch": best["epoch"],
            "watched": best["metric"],
            "checkpoint": f"checkpoints/{checkpoint_name(task)}",
            "metrics": {
                k: v
                for k, v in {**strip_gates(row), **test_metrics}.items()
                if k.startswith(prefix) and not k.endswith("_loss")
            },
        }
    if tasks:  # the monitored best weights again
        best_files.load(trainer.model, monitored, files, None, holding)
    return {"protocol": PROTOCOL, "tasks": tasks}


def task_weights(
    per_task: PerTaskBest, task: str, checkpoints: Path, files: BestFiles | None
) -> tuple[dict[str, torch.Tensor], list[dict[str, Any]] | None]:
    """A task's best weights (placeholders for the tables the files hold) and the table files'
    chain that holds those tables (None: no table held)."""
    state = per_task.states.get(task)
    if state is not None:
        held = best_files.by_files(state)
        return state, files.task_chains[task] if held and files is not None else None
    path = checkpoints / checkpoint_name(task)  # a best epoch before the resume
    if not path.is_file():  # the epoch's weights are nowhere else; last.pt is written
        epoch = per_task.stoppers[task].best_epoch
        raise MtlrecError(
            f"{path}: missing, so {task} cannot be tested with the weights of its best epoch "
            f"({epoch}, before the resume); put the file back (from a copy of the run dir) and "
            "resume the run again: it goes on to the tests"
        )
    resumed = files.resumed_best(path) if files is not None else None
    if resumed is not None:
        return resumed
    return load_checkpoint(path)[MODEL_KEY], None
