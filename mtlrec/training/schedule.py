"""Learning-rate schedules (`trainer.lr_schedule`, `trainer.warmup_steps`) on torch.optim.lr_scheduler.

    constant     the lr throughout (after the warm-up)
    step         StepLR: lr * lr_gamma every lr_step_size optimizer steps
    cosine       CosineAnnealingLR: from lr down to lr * lr_min_factor over the run's last step
    linear       LinearLR: from lr down to lr * lr_min_factor over the run's last step
    exponential  ExponentialLR: lr * lr_gamma after every optimizer step (e.g. lr_gamma=0.999)
    plateau      ReduceLROnPlateau: lr * lr_gamma when the monitored val metric did not improve
                 for lr_plateau_patience epochs (stepped once per epoch, on that metric)

`warmup_steps=W > 0` puts a LinearLR from lr/W up to lr over the first W optimizer steps in
front (SequentialLR); cosine and linear then decay over the remaining steps. Every schedule but
plateau steps after each optimizer step (with trainer.accumulate_batches=N: every N batches).

The dense parameters (and a balancer's learned weights) follow `trainer.lr_schedule`; the
embedding tables follow it too, unless `trainer.embedding_lr` or `trainer.embedding_lr_schedule`
is set: then their optimizers (a dense Adam of their own, RowAdam, Adagrad) get a schedule of
their own, with the same parameters. Scheduler states are part of last.pt: a resume continues the
schedule where it stopped (the length of cosine/linear is fixed when the run starts: a resume
that raises trainer.epochs keeps it).
"""

from __future__ import annotations

from typing import Any

import torch
from torch.optim import lr_scheduler

from mtlrec.errors import MtlrecError
from mtlrec.training.config import TrainerConfig


class LrSchedule:
    """The schedulers of a run's optimizers: `after_step()` per optimizer step, `after_epoch(v)`
    with the monitored value (plateau), `state_dict` for checkpoints."""

    def __init__(
        self,
        parts: list[tuple[torch.optim.Optimizer, str]],
        cfg: TrainerConfig,
        total_steps: int,
        monitor_mode: str,
    ):
        self.cfg = cfg
        self.per_step: list[lr_scheduler.LRScheduler] = []
        self.plateaus: list[lr_scheduler.ReduceLROnPlateau] = []
        self.warmups: list[lr_scheduler.LinearLR] = []  # plateau's warm-up, stepped on its own
        for optimizer, name in parts:
            self._add(optimizer, name, total_steps, monitor_mode)

    def _add(
        self, optimizer: torch.optim.Optimizer, name: str, total_steps: int, mode: str
    ) -> None:
        cfg, warmup = self.cfg, self.cfg.warmup_steps
        warm = (
            lr_scheduler.LinearLR(optimizer, 1.0 / warmup, 1.0, total_iters=warmup)
            if warmup
            else None
        )
        if name == "plateau":
            if warm is not None:
                self.warmups.append(warm)
            self.plateaus.append(
                lr_scheduler.ReduceLROnPlateau(
                    optimizer,
                    mode="min" if mode == "min" else "max",
                    factor=cfg.lr_gamma,
                    patience=cfg.lr_plateau_patience,
                )
            )
            return
        main = self._main(optimizer, name, max(total_steps - warmup, 1))
        if warm is None:
            self.per_step.append(main)
        elif name == "constant":
            self.per_step.append(warm)  # LinearLR stays at lr once its warm-up is over
        else:
            self.per_step.append(lr_scheduler.SequentialLR(optimizer, [warm, main], [warmup]))

    def _main(
        self, optimizer: torch.optim.Optimizer, name: str, steps: int
    ) -> lr_scheduler.LRScheduler:
        cfg = self.cfg
        if name == "step":
            return lr_scheduler.StepLR(optimizer, cfg.lr_step_size, cfg.lr_gamma)
        if name == "exponential":
            return lr_scheduler.ExponentialLR(optimizer, cfg.lr_gamma)
        if name == "cosine":
            base = optimizer.param_groups[0]["lr"]
            return lr_scheduler.CosineAnnealingLR(optimizer, steps, base * cfg.lr_min_factor)
        if name == "linear":
            return lr_scheduler.LinearLR(optimizer, 1.0, cfg.lr_min_factor, total_iters=steps)
        return lr_scheduler.ConstantLR(optimizer, 1.0, total_iters=0)  # constant: the lr as set

    def after_step(self, optimizer_steps: int) -> None:
        """After optimizer step number `optimizer_steps` (counted over the run, from 1)."""
        for scheduler in self.per_step:
            scheduler.step()
        if optimizer_steps <= self.cfg.warmup_steps:
            for warm in self.warmups:
                warm.step()

    def after_epoch(self, monitored: float) -> None:
        for plateau in self.plateaus:
            plateau.step(monitored)

    def state_dict(self) -> dict[str, Any]:
        return {
            "per_step": [s.state_dict() for s in self.per_step],
            "plateaus": [s.state_dict() for s in self.plateaus],
            "warmups": [s.state_dict() for s in self.warmups],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key in ("per_step", "plateaus", "warmups"):
            mine = getattr(self, key)
            saved = state.get(key, [])
            if len(saved) != len(mine):
                raise MtlrecError(
                    f"the checkpoint holds {len(saved)} {key} scheduler(s), this run {len(mine)}; "
                    "resume with the run's own trainer.lr_schedule"
                )
            for scheduler, part in zip(mine, saved, strict=True):
                scheduler.load_state_dict(part)


def separate_embedding_schedule(cfg: TrainerConfig) -> bool:
    """Embedding tables on optimizers and a schedule of their own."""
    return cfg.embedding_lr is not None or cfg.embedding_lr_schedule is not None


def run_schedule(
    optimizers: list[torch.optim.Optimizer],
    cfg: TrainerConfig,
    total_steps: int,
    monitor_mode: str,
    keep_lr: bool = False,
) -> LrSchedule:
    """The schedule of a run's optimizers (the first: dense parameters; the others: tables).

    Building a scheduler sets its optimizer's lr to the schedule's start: `keep_lr` (resume)
    puts the lr restored from the checkpoint back, the loaded scheduler state continues from it.
    """
    restored = [g["lr"] for opt in optimizers for g in opt.param_groups]
    table_schedule = cfg.embedding_lr_schedule or cfg.lr_schedule
    parts = [
        (opt, cfg.lr_schedule if i == 0 else table_schedule) for i, opt in enumerate(optimizers)
    ]
    schedule = LrSchedule(parts, cfg, total_steps, monitor_mode)
    if keep_lr:
        groups = [g for opt in optimizers for g in opt.param_groups]
        for group, lr in zip(groups, restored, strict=True):
            group["lr"] = lr
    return schedule


def lr_columns(optimizers: list[torch.optim.Optimizer], cfg: TrainerConfig) -> dict[str, float]:
    """history.csv's lr (dense parameters) and, on a schedule of their own, the tables' lr."""
    row = {"lr": float(optimizers[0].param_groups[0]["lr"])}
    if separate_embedding_schedule(cfg) and len(optimizers) > 1:
        row["embedding_lr"] = float(optimizers[-1].param_groups[0]["lr"])
    return row
