"""The bookkeeping of one training epoch: order, partial loss sums, NaN watch, stop and checkpoints.

`Trainer.train_epoch` drives the steps; `EpochRun` holds everything an epoch carries between them
(and what a mid-epoch checkpoint must save to continue it exactly). It sees the trainer only
through `EpochSetup` (fixed for the epoch) and `EpochOwner` (what it asks while it runs), so this
module imports nothing of the trainer's and the trainer -> train_epoch arrow is the only one.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Any, NoReturn, Protocol

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from mtlrec.data.spec import TaskSpec
from mtlrec.data.streaming import StreamingSplit
from mtlrec.errors import MtlrecError
from mtlrec.progress import terminal_progress
from mtlrec.training import distributed
from mtlrec.training.batches import EpochPlan
from mtlrec.training.checkpoint import TrainState
from mtlrec.training.monitoring import NonFiniteWatch
from mtlrec.training.objective import task_means


@dataclass(frozen=True)
class EpochSetup:
    """What an epoch takes from its trainer when it begins."""

    plan: EpochPlan
    device: torch.device
    tasks: tuple[TaskSpec, ...]  # the trained tasks, in loss order
    order_generator: torch.Generator  # draws the epoch's order (shared with the trainer)
    is_main: bool  # rank 0 (carries the partial sums of a resumed epoch)
    nan_check_every: int  # trainer.nan_check_every (NaN checks, ranks' agreement on a stop)


class EpochOwner(Protocol):
    """What an epoch asks of the trainer running it while it runs (Trainer is one)."""

    @property
    def last_checkpoint(self) -> str: ...  # named by the NaN message

    @property
    def stop_requested(self) -> bool: ...

    def checkpoint_due(self) -> bool: ...  # checkpoint.every_n_steps at this optimizer step

    def training_state(self, epoch: int) -> TrainState: ...

    def save_mid_epoch(self, state: TrainState, hooks: Any) -> None: ...

    def interrupted(self, epoch: int, step: int | None, steps: int | None = None) -> NoReturn: ...


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
        owner: EpochOwner,
        setup: EpochSetup,
        train: Any,
        epoch: int,
        progress: Progress,
        resume: TrainState | None,
        hooks: Any = None,
    ):
        self.owner, self.setup, self.epoch, self.progress = owner, setup, epoch, progress
        self.hooks, self.plan, self.tasks = hooks, setup.plan, setup.tasks
        device, n_tasks, generator = setup.device, len(setup.tasks), setup.order_generator
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
            if not setup.is_main:  # rank 0 carries the partial sums of all ranks
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
        self.check_every = 1 if device.type == "cpu" else setup.nan_check_every  # CPU: free
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
        owner, steps = self.owner, self.plan.steps
        self.loss_sums += sums
        self.counts += counts
        self.watch.update(sums)
        if (step + 1) % self.check_every == 0:
            self.watch.check(self.epoch, self.tasks, owner.last_checkpoint)
        if not applied:
            return
        # Ranks agree on a stop every check_every steps (a collective + host sync on GPUs).
        stop = distributed.any_rank_every(owner.stop_requested, step + 1, self.check_every)
        if stop or (owner.checkpoint_due() and step + 1 < steps):
            # never save NaN weights
            self.watch.check(self.epoch, self.tasks, owner.last_checkpoint)
            owner.save_mid_epoch(self.state(step + 1), self.hooks)
            if stop:
                self.progress.remove_task(self.bar)
                owner.interrupted(self.epoch, step + 1, steps)
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
            self.owner.training_state(self.epoch),
            step=step,
            perm=self.perm.cpu(),
            epoch_order_generator=self.epoch_order_state,
            loss_sums=distributed.all_reduce_sum(self.loss_sums.clone()).cpu(),
            counts=distributed.all_reduce_sum(self.counts.clone()).cpu(),
            epoch_seconds=self.prior_seconds + time.perf_counter() - self.start,
        )

    def finish(self, task_weights: torch.Tensor) -> dict[str, float]:
        """The epoch's train/ columns: each task's loss and the objective weighted by
        `task_weights` (the balancer's at the epoch's end)."""
        self.progress.remove_task(self.bar)
        self.watch.check(self.epoch, self.tasks, self.owner.last_checkpoint)
        seconds = self.prior_seconds + time.perf_counter() - self.start
        distributed.all_reduce_sum(self.loss_sums)  # the epoch's sums over every rank's rows
        distributed.all_reduce_sum(self.counts)
        per_task = task_means(self.loss_sums, self.counts)
        tasks = self.tasks
        row = {f"train/{t.name}_loss": v for t, v in zip(tasks, per_task.tolist(), strict=True)}
        weights = task_weights.to(per_task.device)
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
