"""The bookkeeping of one training epoch: order, partial loss sums, NaN watch, stop and checkpoints.

`Trainer.train_epoch` drives the steps; `EpochRun` holds everything an epoch carries between them
(and what a mid-epoch checkpoint must save to continue it exactly).
"""

from __future__ import annotations

import dataclasses
import time
from typing import TYPE_CHECKING, Any

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from mtlrec.data.streaming import StreamingSplit
from mtlrec.errors import MtlrecError
from mtlrec.progress import terminal_progress
from mtlrec.training import distributed
from mtlrec.training.checkpoint import TrainState
from mtlrec.training.monitoring import NonFiniteWatch
from mtlrec.training.objective import task_means

if TYPE_CHECKING:
    from mtlrec.training.trainer import Trainer


def make_progress(console: Console, show: Any, is_main: bool) -> Progress:
    """The epoch progress bar: trainer.progress auto (only on a terminal) | true | false."""
    enabled = console.is_terminal if show == "auto" else bool(show)
    return terminal_progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]}"),
        TextColumn("{task.fields[speed]} samples/s"),
        TimeRemainingColumn(),
        enabled=enabled and is_main,
        console=console,
    )


class EpochRun:
    def __init__(
        self,
        trainer: Trainer,
        train: Any,
        epoch: int,
        progress: Progress,
        resume: TrainState | None,
        hooks: Any = None,
    ):
        self.trainer, self.epoch, self.progress, self.hooks = trainer, epoch, progress, hooks
        self.plan = trainer.plan(train)
        device, n_tasks = trainer.device, len(trainer.loss_tasks)
        generator = trainer.order_generator
        # The order generator as the epoch began: a streamed epoch is replayed from it on resume.
        self.epoch_order_state = generator.get_state()
        streaming = isinstance(train, StreamingSplit)
        if resume is not None:  # continue a mid-epoch checkpoint: same order, same partial sums
            assert resume.step is not None and resume.loss_sums is not None
            if resume.epoch_order_generator is not None:
                self.epoch_order_state = resume.epoch_order_generator
            assert resume.perm is not None and resume.counts is not None
            self.perm = resume.perm.to(device)
            self.first_step, self.prior_seconds = int(resume.step), float(resume.epoch_seconds)
            self.loss_sums = resume.loss_sums.to(device)
            self.counts = resume.counts.to(device)
            if not trainer.dist.is_main:  # rank 0 carries the partial sums of all ranks
                self.loss_sums.zero_()
                self.counts.zero_()
            if streaming:  # replay the epoch's draws, skipping the batches already trained
                generator.set_state(self.epoch_order_state)
        else:
            # Streaming shuffles inside its reader (from the same generator): no permutation here.
            self.perm = (
                torch.empty(0, dtype=torch.long)
                if streaming
                else torch.randperm(len(train), generator=generator)
            ).to(device)
            self.first_step, self.prior_seconds = 0, 0.0
            self.loss_sums = torch.zeros(n_tasks, device=device)
            self.counts = torch.zeros(n_tasks, device=device)
        self.watch = NonFiniteWatch(n_tasks, self.first_step, device)
        self.check_every = 1 if device.type == "cpu" else trainer.cfg.nan_check_every  # CPU: free
        self.bar = progress.add_task(
            f"epoch {epoch}",
            total=self.plan.steps,
            completed=self.first_step,
            loss="-",
            speed="-",
        )
        self.start = self.last_update = time.perf_counter()

    def order(self, on_device: bool) -> torch.Tensor:
        return self.perm if on_device else self.perm.cpu()  # one copy per epoch, no sync per step

    def after_step(
        self, step: int, sums: torch.Tensor, counts: torch.Tensor, applied: bool = True
    ) -> None:
        """After batch `step` of the epoch; `applied`: an optimizer step followed it (stops and
        checkpoints only there: trainer.accumulate_batches keeps no half-accumulated state)."""
        trainer, steps = self.trainer, self.plan.steps
        self.loss_sums += sums
        self.counts += counts
        self.watch.update(sums)
        if (step + 1) % self.check_every == 0:
            self.watch.check(self.epoch, trainer.loss_tasks, trainer.last_checkpoint)
        if not applied:
            return
        # Ranks agree on a stop every check_every steps (a collective + host sync on GPUs).
        stop = distributed.any_rank_every(trainer.stop_requested, step + 1, self.check_every)
        every = trainer.checkpoint_every
        if stop or (every and trainer.global_step % every == 0 and step + 1 < steps):
            # never save NaN weights
            self.watch.check(self.epoch, trainer.loss_tasks, trainer.last_checkpoint)
            trainer.save_mid_epoch(self.state(step + 1), self.hooks)
            if stop:
                self.progress.remove_task(self.bar)
                trainer.interrupted(self.epoch, step + 1, steps)
        now = time.perf_counter()
        if now - self.last_update > 0.5 and not self.progress.disable:  # a sync <= 2x a second
            self.last_update = now
            mean = task_means(self.loss_sums, self.counts).sum().item()
            self.progress.update(
                self.bar,
                completed=step + 1,
                loss=f"{mean:.4f}",
                speed=f"{(step + 1 - self.first_step) * self.plan.batch_size / (now - self.start):,.0f}",
            )

    def state(self, step: int) -> TrainState:
        """A mid-epoch TrainState after `step` steps of this epoch."""
        return dataclasses.replace(
            self.trainer.training_state(self.epoch),
            step=step,
            perm=self.perm.cpu(),
            epoch_order_generator=self.epoch_order_state,
            loss_sums=distributed.all_reduce_sum(self.loss_sums.clone()).cpu(),
            counts=distributed.all_reduce_sum(self.counts.clone()).cpu(),
            epoch_seconds=self.prior_seconds + time.perf_counter() - self.start,
        )

    def finish(self) -> dict[str, float]:
        """The epoch's train/ columns: each task's loss and the task-weighted objective."""
        trainer = self.trainer
        self.progress.remove_task(self.bar)
        self.watch.check(self.epoch, trainer.loss_tasks, trainer.last_checkpoint)
        seconds = self.prior_seconds + time.perf_counter() - self.start
        distributed.all_reduce_sum(self.loss_sums)  # the epoch's sums over every rank's rows
        distributed.all_reduce_sum(self.counts)
        per_task = task_means(self.loss_sums, self.counts)
        tasks = trainer.loss_tasks
        row = {f"train/{t.name}_loss": v for t, v in zip(tasks, per_task.tolist(), strict=True)}
        weights = trainer.task_weights().to(per_task.device)
        row["train/loss"] = float((weights * per_task).sum().item())
        if not torch.isfinite(per_task).all():
            bad = [
                t.name
                for t, ok in zip(tasks, torch.isfinite(per_task).tolist(), strict=True)
                if not ok
            ]
            raise MtlrecError(
                f"epoch {self.epoch}: training loss of task(s) {bad} is NaN/inf; "
                "lower trainer.lr or set trainer.grad_clip_norm"
            )
        row["train_seconds"] = seconds
        row["train_samples_per_s"] = self.plan.trained_rows / seconds
        return row


class EvalBar:
    """Rows of a val/test evaluation on the training bar's Progress (`val  ━━━ 40960/150000`):
    on big splits evaluation takes seconds to minutes, which a frozen screen should not hide.
    Updates are throttled like the epoch bar's; the bar is removed when the split is done."""

    def __init__(self, progress: Progress, name: str) -> None:
        self.progress, self.name = progress, name
        self.bar: Any = None
        self.start = self.last_update = time.perf_counter()

    def __call__(self, done: int, total: int) -> None:
        if self.progress.disable:
            return
        if self.bar is None:
            self.bar = self.progress.add_task(self.name, total=total, loss="-", speed="-")
        now = time.perf_counter()
        if now - self.last_update > 0.5 or done == total:
            self.last_update = now
            speed = f"{done / max(now - self.start, 1e-9):,.0f}"
            self.progress.update(self.bar, completed=done, total=total, speed=speed)

    def close(self) -> None:
        if self.bar is not None:
            self.progress.remove_task(self.bar)
            self.bar = None
