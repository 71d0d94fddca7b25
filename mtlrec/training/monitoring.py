"""What the fit loop watches: the monitored metric (early stopping) and non-finite losses.

The monitored metric's direction comes from `mtlrec.metric_registry` (never from a name's last
token: `val/cvr_auc_entire` is an AUC, higher is better), and the monitor must be one of the
metrics this run produces; both are checked before epoch 1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from mtlrec import metric_registry
from mtlrec.data.spec import TaskSpec
from mtlrec.errors import MtlrecError
from mtlrec.training.config import TrainerConfig


def produced_val_metrics(
    targets: list, loss_tasks: tuple[TaskSpec, ...], gauc: bool = False
) -> list[str]:
    """The validation metric keys a run with these targets and tasks writes every epoch."""
    from mtlrec.training.metrics import metric_keys

    keys = metric_keys("val", targets, gauc)
    return [*keys, "val/loss", *(f"val/{t.name}_loss" for t in loss_tasks)]


def auto_monitor(loss_tasks: tuple[TaskSpec, ...]) -> str:
    """trainer.monitor=auto: a metric every trained task enters. val/mean_auc when every task is
    binary, val/mean_mse when every task is a regression, val/loss (the weighted validation loss
    of all tasks) when they mix: a mean AUC would leave the regression tasks out."""
    kinds = {t.type for t in loss_tasks}
    if kinds == {"binary"}:
        return "val/mean_auc"
    if kinds == {"regression"}:
        return "val/mean_mse"
    return "val/loss"


def auto_monitor_line(loss_tasks: tuple[TaskSpec, ...], monitor: str) -> str:
    """The one log line that says which metric trainer.monitor=auto chose, over which tasks."""
    names = ", ".join(f"{t.name} ({t.type})" for t in loss_tasks)
    what = "the weighted validation loss of" if monitor == "val/loss" else "the mean over"
    return f"trainer.monitor=auto: {monitor}, {what} every trained task: {names}"


def resolve_monitor(
    cfg: TrainerConfig, loss_tasks: tuple[TaskSpec, ...], produced: list[str] | None = None
) -> tuple[str, str]:
    """(metric key, max|min) used for early stopping and the best checkpoint.

    `produced`: the validation metric keys this run writes; a monitor outside them is one line.
    """
    monitor = cfg.monitor
    if monitor == "auto":
        monitor = auto_monitor(loss_tasks)
        if produced is not None and monitor not in produced:
            monitor = "val/loss"  # e.g. no scored dataset task: the weighted objective
    elif produced is not None and monitor not in produced:
        raise MtlrecError(
            f"trainer.monitor={monitor!r}: this run produces no such validation metric; "
            f"choose one of {sorted(produced)}"
        )
    mode = cfg.mode
    if mode == "auto":
        direction = metric_registry.direction(monitor)
        if direction is None:
            raise MtlrecError(
                f"trainer.monitor={monitor!r}: its direction is unknown; set trainer.mode=max or min"
            )
        if direction == "one":
            raise MtlrecError(
                f"trainer.monitor={monitor!r}: pcoc is best at 1, neither higher nor lower; "
                "monitor a calibration error such as val/<task>_ece (lower is better) instead"
            )
        mode = direction
    return monitor, mode


@dataclass
class EarlyStopping:
    mode: str
    patience: int | None
    best_value: float = math.nan
    best_epoch: int = 0
    bad_epochs: int = 0

    def improved(self, value: float) -> bool:
        if math.isnan(value):
            return False
        return math.isnan(self.best_value) or (
            value > self.best_value if self.mode == "max" else value < self.best_value
        )

    def update(self, epoch: int, value: float) -> bool:
        """Record an epoch's value; True if it is the new best."""
        if self.improved(value):
            self.best_value, self.best_epoch, self.bad_epochs = value, epoch, 0
            return True
        self.bad_epochs += 1
        return False

    @property
    def should_stop(self) -> bool:
        return self.patience is not None and self.bad_epochs >= self.patience


class NonFiniteLoss(MtlrecError):
    """A training loss became NaN/inf; the run stops and keeps its last good checkpoint."""


def epoch_line(row: dict[str, Any], epochs: int, monitor: str, is_best: bool) -> str:
    """The log line of an ended epoch, from its history row (train/ and val/ columns)."""
    best = "  *best*" if is_best else ""
    return (
        f"epoch {row['epoch']}/{epochs}  train/loss {row['train/loss']:.5f}  "
        f"{monitor} {row[monitor]:.5f}{best}  "
        f"({row['train_seconds']:.1f}s, {row['train_samples_per_s']:,.0f} samples/s)"
    )


class NonFiniteWatch:
    """Remembers the first training step whose per-task loss is NaN/inf, on the device.

    `update` is a few tiny device ops and never syncs with the host, so on a GPU the loop keeps
    running ahead; `check` reads the flag (one sync) every `trainer.nan_check_every` steps, before
    every checkpoint and at the end of the epoch, and names the first bad step and task(s).
    """

    def __init__(self, n_tasks: int, first_step: int, device: torch.device):
        self.first_bad = torch.full((), -1, dtype=torch.long, device=device)
        self.bad_tasks = torch.zeros(n_tasks, dtype=torch.bool, device=device)
        self.step = torch.full((), first_step, dtype=torch.long, device=device)

    def update(self, per_task_sums: torch.Tensor) -> None:
        bad = ~torch.isfinite(per_task_sums)
        new = bad.any() & (self.first_bad < 0)
        self.first_bad = torch.where(new, self.step, self.first_bad)
        self.bad_tasks = torch.where(new, bad, self.bad_tasks)
        self.step += 1

    def check(self, epoch: int, tasks: tuple[TaskSpec, ...], last_checkpoint: str) -> None:
        first = int(self.first_bad.item())
        if first < 0:
            return
        names = [t.name for t, b in zip(tasks, self.bad_tasks.tolist(), strict=True) if b]
        raise NonFiniteLoss(
            f"epoch {epoch} step {first + 1}: training loss of task(s) {names} is NaN/inf; "
            f"stopped, the last good checkpoint is {last_checkpoint}; "
            "lower trainer.lr or set trainer.grad_clip_norm"
        )
