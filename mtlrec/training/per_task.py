"""Per-task best epochs (`trainer.keep_best_per_task=true`) and per-task early stopping
(`trainer.early_stopping=all_tasks`).

Each of the dataset's evaluation tasks (the tasks `mean_*` averages: ESMM's ctr and cvr, not its
ctcvr product) is watched on its own validation metric, `val/<task>_auc` for a binary task and
`val/<task>_mse` for a regression task. The epoch where it is best keeps a copy of the weights
(host memory), written by the run as `checkpoints/best_<task>.pt`; after training, the test split
is scored once per task with that task's weights (`metrics.json`: `per_task_best`). With
`early_stopping=all_tasks`, training stops once every task has gone `trainer.patience` epochs
without improving. The state is a function of the history, so a resumed run replays it.
"""

from __future__ import annotations

from typing import Any

import torch

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

    def __init__(self, targets: list[EvalTarget], patience: int | None):
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

    def keep(self, model: torch.nn.Module) -> None:
        """Copy the current weights (to host memory) for each task the latest epoch improved."""
        for task in self.improved:
            self.states[task] = {
                k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()
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
