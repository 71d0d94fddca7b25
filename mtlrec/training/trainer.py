"""The training loop: fit with per-epoch validation, early stopping, checkpoints; one `step(batch)`.

The loop keeps everything on the device: batches are index slices of whole-split tensors
(mtlrec.training.batches), per-task losses accumulate in device tensors and are read once per
epoch (the progress bar reads them at most a few times a second). Best weights are kept in memory
(big tables whose checkpoints are table files: as those files, training/best_files.py) and
restored before the final test. Evaluation and prediction live in `Evaluator`
(mtlrec.training.evaluator); `Trainer.evaluate`/`predict` delegate to it.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from dataclasses import dataclass, replace
from typing import Any, NoReturn, Protocol

import numpy as np
import rich
import torch
from rich.console import Console
from rich.progress import Progress

from mtlrec.data.loader import Batch, SplitTensors
from mtlrec.data.spec import DatasetSpec, TaskSpec
from mtlrec.data.streaming import StreamingSplit
from mtlrec.errors import MtlrecError
from mtlrec.models.base import MultiTaskModel
from mtlrec.training import best_files, distributed, torchrec_backend, torchrec_checkpoint
from mtlrec.training.balance import BalanceSettings, balance_settings, make_balancer
from mtlrec.training.batches import EpochPlan, epoch_batches, gather, to_device
from mtlrec.training.calibration import ECE_BINS
from mtlrec.training.checkpoint import TrainState, best_weights, rng_state, set_rng_state
from mtlrec.training.config import TrainerConfig
from mtlrec.training.ema import WeightEma
from mtlrec.training.evaluator import Evaluator, group_column, strip_gates
from mtlrec.training.metrics import EvalTarget
from mtlrec.training.monitoring import (
    EarlyStopping,
    auto_monitor_line,
    epoch_line,
    produced_val_metrics,
    resolve_monitor,
)
from mtlrec.training.objective import Objective, embedding_l2_penalty
from mtlrec.training.optim_step import OptimizerStep, make_scaler
from mtlrec.training.optimizers import MultiOptimizer, build_optimizer, sparse_parameters
from mtlrec.training.per_task import PerTaskBest
from mtlrec.training.schedule import (
    LrSchedule,
    lr_columns,
    run_schedule,
    separate_embedding_schedule,
)
from mtlrec.training.signals import StopRequest, TrainingInterrupted
from mtlrec.training.train_epoch import EpochRun, EpochSetup, EvalBar, make_progress

__all__ = ["FitHooks", "FitResult", "Trainer", "TrainerConfig", "gather", "strip_gates"]

log = logging.getLogger(__name__)


class FitHooks(Protocol):
    """What `Trainer.fit` tells its caller (experiment.RunRecorder writes the run dir)."""

    def on_epoch_end(self, row: dict[str, Any], is_best: bool, state: TrainState) -> None: ...

    def on_checkpoint(self, state: TrainState) -> str:
        """Write a mid-epoch state; returns where it went (for messages)."""
        ...


@dataclass
class FitResult:
    history: list[dict[str, Any]]
    best_epoch: int
    best_value: float
    stopped_early: bool
    train_samples_per_s: float
    seconds: float


class Trainer:
    def __init__(
        self,
        model: MultiTaskModel,
        spec: DatasetSpec,
        loss_tasks: tuple[TaskSpec, ...],
        targets: list[EvalTarget],
        cfg: TrainerConfig,
        device: torch.device,
        data_order_seed: int,
        console: Console | None = None,
        balance: BalanceSettings | dict[str, Any] | None = None,
        *,
        stop: StopRequest | None = None,
        checkpoint_every: int | None = None,
        gauc_by: str | None = None,
        ece_bins: int = ECE_BINS,
        weighted_metrics: bool = False,
    ):
        self.model, self.spec, self.loss_tasks, self.targets = model, spec, loss_tasks, targets
        self.cfg, self.device = cfg, device
        self.stop, self.checkpoint_every = stop, checkpoint_every  # checkpoint.every_n_steps
        self.objective = Objective(
            loss_tasks, spec, getattr(model, "extra_loss", None), cfg.sample_weights
        ).to(device)
        produced = produced_val_metrics(targets, loss_tasks, gauc_by is not None)
        self.monitor, self.mode = resolve_monitor(cfg, loss_tasks, produced)
        if cfg.monitor == "auto":
            log.info(auto_monitor_line(loss_tasks, self.monitor))
        self.optimizer = self._make_optimizer()
        # Task balancing (conf/balance/): learned weights train with the model's optimizer.
        balance = balance_settings(balance)  # typed by the run's settings check; a test's dict here
        if self.sparse_tables and balance.cls.writes_grads:
            raise MtlrecError(
                f"balance={balance.name} projects dense per-task gradients and "
                "cannot take the sparse embedding gradients of trainer.embedding_optimizer="
                f"{cfg.embedding_optimizer}; use trainer.embedding_optimizer=adam with it"
            )
        self.balancer = make_balancer(balance, loss_tasks, model).to(device)
        if list(self.balancer.parameters()):
            self.optimizer.add_param_group(
                {"params": list(self.balancer.parameters()), "weight_decay": 0.0}
            )
        self.order_generator = torch.Generator().manual_seed(data_order_seed)
        self.console = console or rich.get_console()
        self.last_checkpoint = "none (no checkpoint was written yet)"
        self.stopper = EarlyStopping(self.mode, cfg.patience)
        self.per_task = self._per_task()
        self.state = self.new_state()
        self.best_files: best_files.BestFiles | None = None  # fit's hooks say (RunRecorder)
        self.best_shards: torchrec_checkpoint.ShardedCheckpointer | None = None  # DCP folders
        self.best_kept_at: int | None = None  # the epoch whose live weights keep_best copied last
        # trainer.compile: the compiled module shares self.model's parameters (what is saved)
        self.forward = torch.compile(model) if cfg.compile else model
        # DDP (trainer.devices): training through DDP, prediction not (ranks' batch counts differ)
        self.dist = distributed.current()
        self.train_forward, self.grad_sync = distributed.data_parallel(
            model,
            self.forward,
            device,
            self.balancer,
            balance.name,
            cfg.compile,
        )
        self.evaluator = Evaluator(
            model,
            spec,
            loss_tasks,
            targets,
            device,
            cfg.eval_batch_size,
            cfg.precision,
            self.forward,
            self.objective,
            group_column=group_column(spec, gauc_by),
            ece_bins=ece_bins,
            weighted=weighted_metrics,
        )
        self.stepper = self._make_stepper()

    def _make_stepper(self) -> OptimizerStep:
        """Once per optimizer step: accumulation, fp16 scaling, clipping (per task network when
        the model says which parameters each task owns, e.g. single_task), schedule, EMA."""
        cfg, model = self.cfg, self.model
        groups = getattr(model, "task_parameter_groups", None)
        return OptimizerStep(
            model,
            self.optimizer,
            self.balancer,
            self.grad_sync,
            cfg.grad_clip_norm,
            groups() if callable(groups) else None,
            LrSchedule([], cfg, 1, self.mode),  # the run's schedule: fit knows its length
            make_scaler(cfg, self.device, self.balancer),
            WeightEma(model, cfg.ema_decay) if cfg.ema_decay is not None else None,
        )

    def new_state(self) -> TrainState:
        """The run's live state before its first epoch. `state` keeps history, best weights and
        train time/rows current (a mid-epoch one also what resumes the epoch); `training_state`
        fills in the rest when a checkpoint is taken."""
        return TrainState(0, 0, self.order_generator.get_state(), {}, {}, [], {}, 0.0, 0)

    @property
    def clip_groups(self) -> Any:
        return self.stepper.clip_groups

    @property
    def global_step(self) -> int:
        """Optimizer steps over the run (with trainer.accumulate_batches=N: batches / N)."""
        return self.stepper.steps

    @global_step.setter
    def global_step(self, value: int) -> None:
        self.stepper.steps = value

    def start_schedule(self, train: Any) -> None:
        """The lr schedule over the run's optimizer steps (schedule.run_schedule)."""
        steps = math.ceil(self.plan(train).steps / self.cfg.accumulate_batches) * self.cfg.epochs
        self.stepper.schedule = run_schedule(
            self.optimizer.optimizers, self.cfg, steps, self.mode, keep_lr=self._restored_lrs
        )

    def _per_task(self) -> PerTaskBest | None:
        """Each task's own best epoch, when kept or when it decides early stopping."""
        keeps = self.cfg.keep_best_per_task  # its weights too, else only its epoch (stopping)
        wanted = keeps or self.cfg.early_stopping == "all_tasks"
        return PerTaskBest(self.targets, self.cfg.patience, keeps) if wanted else None

    @property
    def should_stop(self) -> bool:
        if self.cfg.early_stopping == "all_tasks" and self.per_task is not None:
            return self.per_task.all_stalled
        return self.stopper.should_stop

    def _make_optimizer(self) -> MultiOptimizer:
        """Fused Adam/AdamW for dense parameters; each embedding table per
        trainer.embedding_optimizer (optimizers.py). trainer.embedding_l2 is a loss term on the
        rows each batch uses (step()), never a decay of the whole table."""
        optimizer = build_optimizer(
            self.model,
            self.cfg.optimizer,
            self.cfg.lr,
            self.cfg.weight_decay,
            self.cfg.embedding_optimizer,
            embedding_lr=self.cfg.embedding_lr,
            separate_tables=separate_embedding_schedule(self.cfg),
        )
        self._restored_lrs = False  # set by load_training_state: fit keeps the restored lr
        self.sparse_tables = any(True for _ in sparse_parameters(self.model))
        return torchrec_backend.with_fused_tables(optimizer, self.model)  # the fused tables' state

    def autocast(self) -> torch.autocast:
        """trainer.precision=bf16|fp16: matmuls in bfloat16|float16 (losses, metrics float32)."""
        dtype = torch.float16 if self.cfg.precision == "fp16" else torch.bfloat16
        return torch.autocast(
            self.device.type, dtype=dtype, enabled=self.cfg.precision in ("bf16", "fp16")
        )

    def _progress(self) -> Progress:
        return make_progress(self.console, self.cfg.progress, self.dist.is_main)

    # -- training -----------------------------------------------------------------------------
    def step(self, batch: Batch, apply: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """A batch's forward pass and, with `apply`, the optimizer step on it and the batches
        added since the last step (trainer.accumulate_batches); its per-task loss sums, counts."""
        self.optimizer.catch_up(self.model, batch.sparse)  # sparse_adam: rows it reads, current
        with self.autocast(), self.grad_sync.forward_context():
            outputs = self.train_forward(batch.sparse, batch.dense)
        _, extra, sums, counts = self.objective.losses(outputs, batch.labels)
        if self.cfg.embedding_l2 > 0:
            penalty = self.cfg.embedding_l2 * embedding_l2_penalty(self.model, batch.sparse)
            extra = penalty if extra is None else extra + penalty
        self.stepper.add(sums, counts, extra)
        if apply:
            self.stepper.apply()
        return sums.detach(), counts

    def plan(self, train: Any) -> EpochPlan:
        bs = self.cfg.batch_size * self.dist.world_size  # global batch
        return EpochPlan(len(train), bs, self.cfg.tail_batch)

    def train_epoch(
        self, train: SplitTensors, epoch: int, progress: Progress, hooks: FitHooks | None = None
    ) -> dict[str, float]:
        """Train one epoch (or the rest of a resumed one); its history row's train/ columns."""
        self.model.train()
        setup = EpochSetup(
            self.plan(train),
            self.device,
            self.loss_tasks,
            self.order_generator,
            self.dist.is_main,
            self.cfg.nan_check_every,
        )
        resume = self.state if self.state.mid_epoch else None
        run = EpochRun(self, setup, train, epoch, progress, resume, hooks)
        self.state = replace(self.state, step=None, perm=None, loss_sums=None, counts=None)
        on_device = not isinstance(train, StreamingSplit) and train.labels.device == self.device
        batches = epoch_batches(
            train, run.plan, run.order(on_device), run.first_step, on_device, self.order_generator
        )
        every, steps = self.cfg.accumulate_batches, run.plan.steps
        on_step = getattr(hooks, "on_optimizer_step", None)
        for step, batch in zip(range(run.first_step, steps), batches, strict=True):
            apply = (step + 1) % every == 0 or step + 1 == steps  # an optimizer step
            sums, counts = self.step(batch if on_device else to_device(batch, self.device), apply)
            if apply and on_step is not None:
                on_step(self.global_step, self.stepper.lr)
            run.after_step(step, sums, counts, apply)
        return run.finish(self.task_weights())

    # -- resumable state -----------------------------------------------------------------------
    def training_state(self, epoch: int) -> TrainState:
        """An epoch-end TrainState (EpochRun adds the partial epoch of a mid-epoch state)."""
        return TrainState(
            epoch=epoch,
            global_step=self.global_step,
            order_generator=self.order_generator.get_state(),
            rng=rng_state(self.device),
            early_stopping=dict(self.stopper.__dict__),
            history=[dict(r) for r in self.state.history],
            best_state=best_weights(
                self.saved_model(), self.state.best_state, self.best_kept_at == epoch
            ),
            train_time=self.state.train_time,
            train_rows=self.state.train_rows,
            balancer={
                k: v.detach().cpu() if torch.is_tensor(v) else v
                for k, v in self.balancer.state_dict().items()
            },
            world_size=self.dist.world_size,
            step_state=self.stepper.state_dict(),
        )

    def load_training_state(self, state: TrainState) -> int:
        """Restore a TrainState (model and optimizer are loaded by the caller); returns the epoch
        to continue with. RNG states are restored last, after the model was built."""
        self.global_step = int(state.global_step)
        self.order_generator.set_state(state.order_generator)
        self.stopper.__dict__.update(state.early_stopping)
        self.state = replace(  # a mid-epoch state: train_epoch continues its epoch
            state,
            history=[dict(r) for r in state.history],
            best_state={  # a meta tensor: the table files hold it (training/best_files.py)
                k: v if v.is_meta else v.to(self.device) for k, v in state.best_state.items()
            },
            train_time=float(state.train_time),
            train_rows=int(state.train_rows),
        )
        if self.per_task is not None:  # its state is a function of the history
            self.per_task = self._per_task()
            assert self.per_task is not None
            self.per_task.replay(self.state.history)
        if state.balancer:
            self.balancer.load_state_dict(state.balancer)
        self.stepper.load_state_dict(state.step_state)
        set_rng_state(state.rng, self.device)
        return int(state.epoch) + (0 if state.mid_epoch else 1)

    def save_mid_epoch(self, state: TrainState, hooks: FitHooks | None) -> None:
        if hooks is not None:
            where = hooks.on_checkpoint(state)
            self.last_checkpoint = f"{where} (epoch {state.epoch} step {state.step})"

    def checkpoint_due(self) -> bool:
        """checkpoint.every_n_steps: a mid-epoch checkpoint after this optimizer step."""
        every = self.checkpoint_every
        return bool(every) and every is not None and self.global_step % every == 0

    def interrupted(self, epoch: int, step: int | None, steps: int | None = None) -> NoReturn:
        assert self.stop is not None
        at = f"epoch {epoch}" + (f" step {step}/{steps}" if step is not None else " end")
        raise TrainingInterrupted(
            f"{self.stop.name}: training stopped after {at}; saved {self.last_checkpoint}",
            int(self.stop.signum or 2),
        )

    @property
    def stop_requested(self) -> bool:
        return self.stop is not None and self.stop.requested

    def fit(
        self,
        splits: dict[str, SplitTensors],
        hooks: FitHooks | None = None,
        resume: TrainState | None = None,
    ) -> FitResult:
        """Train with validation each epoch; restores the best weights before returning.

        `hooks.on_epoch_end(row, is_best, state)` writes history and checkpoints;
        `hooks.on_checkpoint(state)` writes mid-epoch states (every `checkpoint_every` steps and
        on interruption). `resume` is a TrainState to continue from: the same epochs, batches and
        RNG draws follow as in the uninterrupted run.
        """
        train, val = splits["train"], splits["val"]
        self.stopper = EarlyStopping(self.mode, self.cfg.patience)
        self.per_task = self._per_task()
        self.state = self.new_state()  # keep_best fills its best_state at the end of epoch 1
        self.best_files, self.best_kept_at = getattr(hooks, "best_files", None), None
        self.best_shards = torchrec_checkpoint.best_shards(hooks, self.cfg)
        first_epoch = 1
        self._restored_lrs = resume is not None
        self.start_schedule(train)
        if resume is not None:
            first_epoch = self.load_training_state(resume)
            if self.should_stop:
                first_epoch = self.cfg.epochs + 1  # the run had already stopped early
        t0 = time.perf_counter()
        with self._progress() as progress:
            for epoch in range(first_epoch, self.cfg.epochs + 1):
                row = self._epoch(train, val, epoch, progress, t0, hooks)
                if hooks is not None:
                    state = self.training_state(epoch)
                    hooks.on_epoch_end(row, row.pop("_is_best"), state)
                    ended = time.perf_counter() - self.trained_at  # train.log only: bench_vocab
                    log.info("epoch %d end: %.2fs", epoch, ended, extra={"console": False})
                    self.last_checkpoint = f"checkpoints/last.pt (epoch {state.epoch} end)"
                else:
                    row.pop("_is_best")
                # rank 0's decision; reaching the last epoch is not a stop
                if epoch < self.cfg.epochs and distributed.decide(self.should_stop):
                    log.info(
                        "early stopping: %s did not improve for %d epochs",
                        self.monitor
                        if self.cfg.early_stopping == "monitor"
                        else "no task's own val metric",
                        self.stopper.patience,
                    )
                    break
                if distributed.any_rank(self.stop_requested):
                    self.interrupted(epoch, None)
        best = self.state.best_state  # empty only if no epoch has ended yet
        if best and not torchrec_checkpoint.load_best(self, hooks):  # each rank its shards
            best_files.load(self.model, best, self.best_files)
        history = self.state.history
        return FitResult(
            history,
            self.stopper.best_epoch or 1,
            self.stopper.best_value,
            # early: patience ran out before the last requested epoch (not merely reached it)
            self.should_stop and bool(history) and history[-1]["epoch"] < self.cfg.epochs,
            self.state.train_rows / self.state.train_time if self.state.train_time else math.nan,
            time.perf_counter() - t0,
        )

    def _epoch(
        self, train: Any, val: Any, epoch: int, progress: Progress, t0: float, hooks: Any
    ) -> dict:
        """Train and validate one epoch; its history row (with `_is_best` for fit)."""
        row: dict[str, Any] = {"epoch": epoch}
        row.update(self.train_epoch(train, epoch, progress, hooks))
        row.update(self.balancer.end_epoch())  # weight/{task}: the epoch's task weights
        distributed.broadcast_state(self.balancer)  # ranks go on with rank 0's weights
        self.state.epoch = epoch
        self.state.train_time += row["train_seconds"]
        self.state.train_rows += self.plan(train).trained_rows
        self.trained_at = time.perf_counter()  # the epoch-end cost is logged from here
        self.optimizer.flush()  # rows the sparse path left behind are brought up to date
        with self.evaluated_weights():
            val_metrics = self.evaluate(val, "val", progress)
            is_best = self.stopper.update(epoch, val_metrics[self.monitor])
            if is_best or epoch == 1:
                self.keep_best(epoch)
        row.update(val_metrics)
        row.update(lr_columns(self.optimizer.optimizers, self.cfg))
        self.stepper.schedule.after_epoch(val_metrics[self.monitor])  # plateau
        if self.per_task is not None:
            with self.evaluated_weights():
                self.per_task.update(epoch, val_metrics)
                self.per_task.keep(self.model, self.best_files)
        row["seconds"] = time.perf_counter() - t0
        self.state.history.append(row)
        log.info(epoch_line(row, self.cfg.epochs, self.monitor, is_best))
        return {**row, "_is_best": is_best}

    def evaluated_weights(self) -> Any:
        """The weights validation sees: the EMA's with trainer.ema_decay, else the model's."""
        ema = self.stepper.ema
        return ema.swapped_in() if ema is not None else contextlib.nullcontext()

    def saved_model(self) -> MultiTaskModel:
        """The model best.pt holds (the averaged one with trainer.ema_decay)."""
        ema = self.stepper.ema
        return ema.module if ema is not None else self.model  # type: ignore[return-value]

    def keep_best(self, epoch: int) -> None:
        """The weights become the best ones, copied into the previous best's (never 2 copies);
        the tables `best_files` holds are not copied (their checkpoint files keep them)."""
        shards = self.best_shards  # sharded tables: by reference to their DCP folder, no gather
        state = shards.live_state() if shards is not None else self.model.state_dict()
        self.state.best_state = best_files.keep(self.state.best_state, state, self.best_files)
        self.best_kept_at = epoch if shards is None else None  # by reference: not the live ones

    # -- evaluation (delegated) ------------------------------------------------------------------
    def task_weights(self) -> torch.Tensor:
        """The task weights in effect (the balancer's; learned ones included)."""
        return self.balancer.current_weights().detach()

    def predict(self, split: SplitTensors) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        return self.evaluator.predict(split, self.task_weights())

    def evaluate(
        self, split: SplitTensors, name: str, progress: Progress | None = None
    ) -> dict[str, float]:
        """`{name}/...` metrics with a rows bar on `progress` (fit's), or on a bar of its own
        (the test split after fit: rich allows one live display at a time)."""
        if progress is None:
            with self._progress() as own:
                return self.evaluate(split, name, own)
        bar = EvalBar(progress, name)
        try:
            return self.evaluator.evaluate(split, name, self.task_weights(), bar)
        finally:
            bar.close()
