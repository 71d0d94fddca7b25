"""The training loop: fit with per-epoch validation, early stopping, checkpoints; evaluate; predict.

The loop keeps everything on the device: batches are index slices of whole-split tensors, per-task
losses accumulate in device tensors and are read once per epoch (the progress bar reads them at
most a few times a second). Best weights are kept in memory and restored before the final test.
"""

from __future__ import annotations

import copy
import itertools
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from mtlrec.data.loader import Batch, SplitTensors
from mtlrec.data.spec import DatasetSpec, TaskSpec
from mtlrec.data.streaming import StreamingSplit
from mtlrec.errors import MtlrecError
from mtlrec.models.base import MultiTaskModel
from mtlrec.models.layers import gate_statistics
from mtlrec.training import distributed
from mtlrec.training.balance import make_balancer
from mtlrec.training.checkpoint import rng_state, set_rng_state
from mtlrec.training.metrics import HIGHER_IS_BETTER, EvalTarget, split_metrics
from mtlrec.training.objective import Objective
from mtlrec.training.signals import StopRequest, TrainingInterrupted

log = logging.getLogger(__name__)


@dataclass
class TrainerConfig:
    """conf/trainer/*.yaml"""

    optimizer: str = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0
    embedding_l2: float = 0.0
    batch_size: int = 1024
    eval_batch_size: int = 8192
    epochs: int = 5
    grad_clip_norm: float | None = None
    monitor: str = "auto"
    mode: str = "auto"
    patience: int | None = 2
    num_threads: int | None = None
    progress: Any = "auto"
    deterministic: bool = False
    nan_check_every: int = 100
    precision: str = "fp32"
    compile: bool = False
    devices: int = 1  # data-parallel ranks (mtlrec.training.distributed)

    def validate(self) -> None:
        if self.optimizer not in ("adam", "adamw"):
            raise MtlrecError(f"trainer.optimizer '{self.optimizer}' is unknown; use adam or adamw")
        for key in ("batch_size", "eval_batch_size", "epochs"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise MtlrecError(f"trainer.{key} must be an integer >= 1, got {value!r}")
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise MtlrecError(f"trainer.lr must be > 0, got {self.lr!r}")
        for key in ("weight_decay", "embedding_l2"):
            if not getattr(self, key) >= 0:
                raise MtlrecError(f"trainer.{key} must be >= 0, got {getattr(self, key)!r}")
        if self.grad_clip_norm is not None and not self.grad_clip_norm > 0:
            raise MtlrecError(
                f"trainer.grad_clip_norm must be > 0 or null, got {self.grad_clip_norm!r}"
            )
        if self.mode not in ("auto", "max", "min"):
            raise MtlrecError(f"trainer.mode must be auto, max or min, got {self.mode!r}")
        if self.patience is not None and (not isinstance(self.patience, int) or self.patience < 1):
            raise MtlrecError(
                f"trainer.patience must be an integer >= 1 or null, got {self.patience!r}"
            )
        if isinstance(self.nan_check_every, bool) or not (
            isinstance(self.nan_check_every, int) and self.nan_check_every >= 1
        ):
            raise MtlrecError(
                f"trainer.nan_check_every must be an integer >= 1, got {self.nan_check_every!r}"
            )
        if self.precision not in ("fp32", "bf16"):
            raise MtlrecError(f"trainer.precision '{self.precision}' is unknown; use fp32 or bf16")
        if not isinstance(self.compile, bool):
            raise MtlrecError(f"trainer.compile must be true or false, got {self.compile!r}")
        if self.num_threads is not None and (
            not isinstance(self.num_threads, int) or self.num_threads < 1
        ):
            raise MtlrecError(
                f"trainer.num_threads must be an integer >= 1 or null, got {self.num_threads!r}"
            )


def resolve_monitor(cfg: TrainerConfig, loss_tasks: tuple[TaskSpec, ...]) -> tuple[str, str]:
    """(metric key, max|min) used for early stopping and the best checkpoint."""
    monitor = cfg.monitor
    if monitor == "auto":
        monitor = "val/mean_auc" if any(t.type == "binary" for t in loss_tasks) else "val/mean_mse"
    mode = cfg.mode
    if mode == "auto":
        metric = monitor.rsplit("/", 1)[-1].split("_")[-1]
        mode = "max" if metric in HIGHER_IS_BETTER else "min"
    return monitor, mode


@dataclass
class FitResult:
    history: list[dict[str, Any]]
    best_epoch: int
    best_value: float
    stopped_early: bool
    train_samples_per_s: float
    seconds: float


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


def gather(split: SplitTensors, idx: torch.Tensor, on_device: bool) -> Batch:
    """Rows `idx` of a split; index_select is several times faster than split[idx] on CPU.

    From pinned host memory (a split too large for the GPU) the rows land in pinned buffers, so
    the non_blocking copy to the GPU that follows is truly asynchronous (torch's caching host
    allocator keeps a buffer alive until its copy is done).
    """
    tensors = (split.sparse, split.dense, split.labels)
    idx = idx if on_device else idx.cpu()
    if on_device or not split.labels.is_pinned():
        return Batch(*(t.index_select(0, idx) for t in tensors))
    out = []
    for t in tensors:
        buf = torch.empty((idx.numel(), *t.shape[1:]), dtype=t.dtype, pin_memory=True)
        out.append(torch.index_select(t, 0, idx, out=buf))
    return Batch(*out)


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
        balance: dict[str, Any] | None = None,
    ):
        self.model, self.spec, self.loss_tasks, self.targets = model, spec, loss_tasks, targets
        self.cfg, self.device = cfg, device
        self.objective = Objective(loss_tasks, spec, getattr(model, "extra_loss", None)).to(device)
        self.monitor, self.mode = resolve_monitor(cfg, loss_tasks)
        self.optimizer = self._make_optimizer()
        # Task balancing (conf/balance/): learned weights train with the model's optimizer.
        self.balancer = make_balancer(balance, loss_tasks, model).to(device)
        if list(self.balancer.parameters()):
            self.optimizer.add_param_group(
                {"params": list(self.balancer.parameters()), "weight_decay": 0.0}
            )
        self.order_generator = torch.Generator().manual_seed(data_order_seed)
        self.console = console or Console(stderr=True)
        self.gate_keys: list[str] = []
        # Interruption and checkpoints (set by the caller; see fit()).
        self.stop: StopRequest | None = None
        self.checkpoint_every: int | None = None  # checkpoint.every_n_steps
        self.on_checkpoint: Callable[[dict], str] | None = None  # writes a mid-epoch state
        self.last_checkpoint = "none (no checkpoint was written yet)"
        self.global_step = 0
        self._resume_epoch: dict | None = None
        self.stopper = EarlyStopping(self.mode, cfg.patience)
        self.history: list[dict[str, Any]] = []
        self.best_state: dict[str, torch.Tensor] = {}
        self.train_time, self.train_rows = 0.0, 0
        # trainer.compile: the compiled module shares parameters with self.model (state_dicts,
        # checkpoints and the optimizer see the plain model).
        self.forward = torch.compile(model) if cfg.compile else model
        # Data parallel (trainer.devices / torchrun): training goes through DDP, prediction does not
        # (ranks predict different numbers of batches). Single process: train_forward is forward.
        self.dist = distributed.current()
        self.train_forward, self.grad_sync = distributed.data_parallel(
            model,
            self.forward,
            device,
            self.balancer,
            str((balance or {}).get("name")),
            cfg.compile,
        )

    def _make_optimizer(self) -> torch.optim.Optimizer:
        emb = [
            p
            for m in self.model.modules()
            if isinstance(m, torch.nn.Embedding)
            for p in m.parameters()
        ]
        emb_ids = {id(p) for p in emb}
        rest = [p for p in self.model.parameters() if id(p) not in emb_ids]
        groups = [{"params": rest, "weight_decay": self.cfg.weight_decay}]
        if emb:
            # L2 on embeddings as the optimizer's (coupled) weight decay of the table: no per-step work.
            groups.append({"params": emb, "weight_decay": self.cfg.embedding_l2})
        opt_cls = torch.optim.AdamW if self.cfg.optimizer == "adamw" else torch.optim.Adam
        try:
            # The fused kernel updates every parameter in one pass: ~5-9x faster steps on CPU than
            # the default per-tensor loop (a large share of a small model's step time).
            return opt_cls(groups, lr=self.cfg.lr, fused=True)
        except (RuntimeError, TypeError):  # device or torch version without a fused kernel
            return opt_cls(groups, lr=self.cfg.lr)

    def autocast(self) -> torch.autocast:
        """trainer.precision=bf16: matmuls in bfloat16 (losses and metrics stay float32)."""
        return torch.autocast(
            self.device.type, dtype=torch.bfloat16, enabled=self.cfg.precision == "bf16"
        )

    # -- progress -----------------------------------------------------------------------------
    def _progress(self) -> Progress:
        show = self.cfg.progress
        enabled = self.console.is_terminal if show == "auto" else bool(show)
        enabled = enabled and self.dist.is_main
        return Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"),
            TextColumn("{task.fields[speed]} samples/s"),
            TimeRemainingColumn(),
            console=self.console,
            disable=not enabled,
            transient=True,
        )

    # -- training -----------------------------------------------------------------------------
    def train_epoch(self, train: SplitTensors, epoch: int, progress: Progress) -> dict[str, float]:
        self.model.train()
        n, bs = len(train), self.cfg.batch_size * self.dist.world_size  # global batch
        steps = math.ceil(n / bs)
        resume, self._resume_epoch = self._resume_epoch, None
        # The order generator as the epoch began: a streamed epoch is replayed from it on resume.
        epoch_order_state = self.order_generator.get_state()
        if resume is not None:  # continue a mid-epoch checkpoint: same order, same partial sums
            epoch_order_state = resume.get("epoch_order_generator", epoch_order_state)
            perm = resume["perm"].to(self.device)
            first_step, prior_seconds = int(resume["step"]), float(resume["epoch_seconds"])
            loss_sums = resume["loss_sums"].to(self.device)
            counts = resume["counts"].to(self.device)
            if not self.dist.is_main:  # rank 0 carries the partial sums of all ranks
                loss_sums.zero_()
                counts.zero_()
        else:
            # Streaming shuffles inside its reader (from the same generator): no permutation here.
            perm = (
                torch.empty(0, dtype=torch.long)
                if isinstance(train, StreamingSplit)
                else torch.randperm(n, generator=self.order_generator)
            ).to(self.device)
            first_step, prior_seconds = 0, 0.0
            loss_sums = torch.zeros(len(self.loss_tasks), device=self.device)
            counts = torch.zeros(len(self.loss_tasks), device=self.device)
        watch = NonFiniteWatch(len(self.loss_tasks), first_step, self.device)
        check_every = 1 if self.device.type == "cpu" else self.cfg.nan_check_every  # CPU: free
        bar = progress.add_task(
            f"epoch {epoch}", total=steps, completed=first_step, loss="-", speed="-"
        )
        start = last_update = time.perf_counter()
        on_device = not isinstance(train, StreamingSplit) and train.labels.device == self.device
        if isinstance(train, StreamingSplit):  # dataset.streaming: batches come from the reader
            if first_step:  # resume: replay the epoch's draws, skip the batches already trained
                self.order_generator.set_state(epoch_order_state)
            batches = itertools.islice(train.batches(bs, self.order_generator), first_step, None)
        else:
            order = perm if on_device else perm.cpu()  # one copy per epoch, no sync per step
            batches = (
                gather(train, distributed.shard(order[step * bs : (step + 1) * bs]), on_device)
                for step in range(first_step, steps)
            )
        for step, batch in zip(range(first_step, steps), batches, strict=True):
            if not on_device:
                batch = type(batch)(
                    *(
                        t.to(self.device, non_blocking=True)
                        for t in (batch.sparse, batch.dense, batch.labels)
                    )
                )
            with self.autocast(), self.grad_sync.forward_context():
                outputs = self.train_forward(batch.sparse, batch.dense)
            means, extra, sums, cnts = self.objective.losses(outputs, batch.labels)
            self.optimizer.zero_grad(set_to_none=True)
            self.balancer.backward(means, self.model, extra)
            self.grad_sync.after_backward()
            if self.cfg.grad_clip_norm is not None:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip_norm)
            self.optimizer.step()
            loss_sums += sums.detach()
            counts += cnts
            watch.update(sums.detach())
            self.global_step += 1
            if (step + 1) % check_every == 0:
                watch.check(epoch, self.loss_tasks, self.last_checkpoint)
            # Ranks agree on a stop every check_every steps (a collective + host sync on GPUs).
            stop = distributed.any_rank_every(
                self.stop is not None and self.stop.requested, step + 1, check_every
            )
            every = self.checkpoint_every
            if stop or (every and self.global_step % every == 0 and step + 1 < steps):
                watch.check(epoch, self.loss_tasks, self.last_checkpoint)  # never save NaN weights
                state = self.training_state(epoch)
                state.update(
                    step=step + 1,
                    perm=perm.cpu(),
                    epoch_order_generator=epoch_order_state,
                    loss_sums=distributed.all_reduce_sum(loss_sums.clone()).cpu(),
                    counts=distributed.all_reduce_sum(counts.clone()).cpu(),
                    epoch_seconds=prior_seconds + time.perf_counter() - start,
                )
                self._save(state)
                if stop:
                    progress.remove_task(bar)
                    self._interrupted(epoch, step + 1, steps)
            now = time.perf_counter()
            if (
                now - last_update > 0.5 and not progress.disable
            ):  # a host sync at most twice a second
                last_update = now
                mean = (loss_sums / counts.clamp_min(1)).sum().item()
                progress.update(
                    bar,
                    completed=step + 1,
                    loss=f"{mean:.4f}",
                    speed=f"{(step + 1 - first_step) * bs / (now - start):,.0f}",
                )
        progress.remove_task(bar)
        watch.check(epoch, self.loss_tasks, self.last_checkpoint)
        seconds = prior_seconds + time.perf_counter() - start
        distributed.all_reduce_sum(loss_sums)  # the epoch's sums over every rank's rows
        distributed.all_reduce_sum(counts)
        per_task = (loss_sums / counts.clamp_min(1)).tolist()
        row = {f"train/{t.name}_loss": v for t, v in zip(self.loss_tasks, per_task, strict=True)}
        row["train/loss"] = float(
            sum(t.weight * v for t, v in zip(self.loss_tasks, per_task, strict=True))
        )
        if not math.isfinite(row["train/loss"]):
            bad = [
                t.name
                for t, v in zip(self.loss_tasks, per_task, strict=True)
                if not math.isfinite(v)
            ]
            raise MtlrecError(
                f"epoch {epoch}: training loss of task(s) {bad} is NaN/inf; lower trainer.lr or set trainer.grad_clip_norm"
            )
        row["train_seconds"] = seconds
        row["train_samples_per_s"] = n / seconds
        return row

    # -- resumable state -----------------------------------------------------------------------
    def training_state(self, epoch: int) -> dict[str, Any]:
        """Everything besides model and optimizer that an exact resume needs.

        `step` is None for a state taken at the end of `epoch` (after validation); a mid-epoch
        state adds `step` (steps done in the epoch), the epoch's permutation and partial loss sums.
        """
        return {
            "epoch": epoch,
            "step": None,
            "global_step": self.global_step,
            "order_generator": self.order_generator.get_state(),
            "rng": rng_state(self.device),
            "early_stopping": dict(self.stopper.__dict__),
            "history": [dict(r) for r in self.history],
            "best_state": {k: v.detach().cpu().clone() for k, v in self.best_state.items()},
            "train_time": self.train_time,
            "train_rows": self.train_rows,
            "balancer": {
                k: v.detach().cpu() if torch.is_tensor(v) else v
                for k, v in self.balancer.state_dict().items()
            },
            "world_size": self.dist.world_size,
        }

    def load_training_state(self, state: dict[str, Any]) -> int:
        """Restore a `training_state` (model and optimizer are loaded by the caller).

        Returns the epoch to continue with. RNG states are restored last, after the model was built.
        """
        self.global_step = int(state["global_step"])
        self.order_generator.set_state(state["order_generator"])
        self.stopper.__dict__.update(state["early_stopping"])
        self.history = [dict(r) for r in state["history"]]
        self.best_state = {k: v.to(self.device) for k, v in state["best_state"].items()}
        self.train_time, self.train_rows = float(state["train_time"]), int(state["train_rows"])
        if "balancer" in state:
            self.balancer.load_state_dict(state["balancer"])
        set_rng_state(state["rng"], self.device)
        if state["step"] is None:
            return int(state["epoch"]) + 1
        self._resume_epoch = state
        return int(state["epoch"])

    def _save(self, state: dict[str, Any]) -> None:
        if self.on_checkpoint is not None:
            where = self.on_checkpoint(state)
            step = "end" if state["step"] is None else f"step {state['step']}"
            self.last_checkpoint = f"{where} (epoch {state['epoch']} {step})"

    def _save_note(self, state: dict[str, Any]) -> None:
        self.last_checkpoint = f"checkpoints/last.pt (epoch {state['epoch']} end)"

    def _interrupted(self, epoch: int, step: int | None, steps: int | None = None) -> None:
        assert self.stop is not None
        at = f"epoch {epoch}" + (f" step {step}/{steps}" if step is not None else " end")
        raise TrainingInterrupted(
            f"{self.stop.name}: training stopped after {at}; saved {self.last_checkpoint}",
            int(self.stop.signum or 2),
        )

    def fit(
        self,
        splits: dict[str, SplitTensors],
        on_epoch_end: Callable[[dict, bool, dict], None] | None = None,
        resume: dict[str, Any] | None = None,
    ) -> FitResult:
        """Train with validation each epoch; restores the best weights before returning.

        `on_epoch_end(row, is_best, state)` lets the caller write history and checkpoints (`state`
        is a `training_state`); `self.on_checkpoint(state)` writes mid-epoch states (every
        `checkpoint_every` steps and on interruption). `resume` is a `training_state` to continue
        from: the same epochs, batches and RNG draws follow as in the uninterrupted run.
        """
        train, val = splits["train"], splits["val"]
        self.stopper = stopper = EarlyStopping(self.mode, self.cfg.patience)
        self.history = history = []
        self.best_state = copy.deepcopy(self.model.state_dict())
        self.train_time, self.train_rows = 0.0, 0
        first_epoch = 1
        if resume is not None:
            first_epoch = self.load_training_state(resume)
            stopper, history = self.stopper, self.history
            if stopper.should_stop:
                first_epoch = self.cfg.epochs + 1  # the run had already stopped early
        t0 = time.perf_counter()
        with self._progress() as progress:
            for epoch in range(first_epoch, self.cfg.epochs + 1):
                row: dict[str, Any] = {"epoch": epoch}
                row.update(self.train_epoch(train, epoch, progress))
                row.update(self.balancer.end_epoch())  # weight/{task}: the epoch's task weights
                distributed.broadcast_state(self.balancer)  # ranks go on with rank 0's weights
                self.train_time += row["train_seconds"]
                self.train_rows += len(train)
                val_metrics = self.evaluate(val, "val")
                row.update(val_metrics)
                row["lr"] = self.optimizer.param_groups[0]["lr"]
                if self.monitor not in val_metrics:
                    raise MtlrecError(
                        f"trainer.monitor '{self.monitor}' is not a validation metric; choose one of {sorted(val_metrics)}"
                    )
                is_best = stopper.update(epoch, val_metrics[self.monitor])
                if is_best or epoch == 1:
                    self.best_state = copy.deepcopy(self.model.state_dict())
                row["seconds"] = time.perf_counter() - t0
                history.append(row)
                log.info(
                    "epoch %d/%d  train/loss %.5f  %s %.5f%s  (%.1fs, %s samples/s)",
                    epoch,
                    self.cfg.epochs,
                    row["train/loss"],
                    self.monitor,
                    val_metrics[self.monitor],
                    "  *best*" if is_best else "",
                    row["train_seconds"],
                    f"{row['train_samples_per_s']:,.0f}",
                )
                if on_epoch_end is not None:
                    state = self.training_state(epoch)
                    on_epoch_end(row, is_best, state)
                    self._save_note(state)
                if distributed.decide(stopper.should_stop):  # rank 0's decision
                    log.info(
                        "early stopping: %s did not improve for %d epochs",
                        self.monitor,
                        stopper.patience,
                    )
                    break
                if distributed.any_rank(self.stop is not None and self.stop.requested):
                    self._interrupted(epoch, None)
        self.model.load_state_dict(self.best_state)
        return FitResult(
            history,
            stopper.best_epoch or 1,
            stopper.best_value,
            stopper.should_stop,
            self.train_rows / self.train_time if self.train_time else math.nan,
            time.perf_counter() - t0,
        )

    # -- evaluation ---------------------------------------------------------------------------
    @torch.no_grad()
    def predict(self, split: SplitTensors) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Predictions of every output over a split (probabilities for binary outputs), and aux sums."""
        self.model.eval()
        n, bs = len(split), self.cfg.eval_batch_size
        # Data parallel: this rank predicts rows [lo, hi) (whole eval batches), then all ranks
        # gather every row in order; one process: lo, hi = 0, n.
        lo, hi = distributed.eval_block(n, bs)
        outputs = {
            name: torch.empty(hi - lo, device=self.device) for name in self.model.output_types
        }
        gate_sum = None
        loss_sums = torch.zeros(len(self.loss_tasks), device=self.device)
        counts = torch.zeros(len(self.loss_tasks), device=self.device)
        for start in range(lo, hi, bs):
            batch = split.slice(start, min(start + bs, hi))
            sparse, dense, labels = (
                t.to(self.device, non_blocking=True)
                for t in (batch.sparse, batch.dense, batch.labels)
            )
            with self.autocast():
                out = self.forward(sparse, dense)
            _, sums, cnts = self.objective(out, labels)
            loss_sums += sums
            counts += cnts
            for name, kind in self.model.output_types.items():
                value = out[name].float()
                outputs[name][start - lo : start - lo + len(labels)] = (
                    torch.sigmoid(value) if kind == "binary" else value
                )
            if "gates" in out:
                g = out["gates"].float().sum(0)
                gate_sum = g if gate_sum is None else gate_sum + g
        outputs = distributed.gather_rows(outputs, n)
        distributed.all_reduce_sum(loss_sums)
        distributed.all_reduce_sum(counts)
        gate_sum = distributed.sum_optional(gate_sum)
        aux: dict[str, Any] = {
            "loss": float((self.objective.weights * loss_sums / counts.clamp_min(1)).sum().item())
        }
        if gate_sum is not None:
            aux["gates"] = (gate_sum / n).cpu().numpy()  # mean gate weight [tasks, experts]
        return {k: v.cpu().numpy() for k, v in outputs.items()}, aux

    def evaluate(self, split: SplitTensors, name: str) -> dict[str, float]:
        predictions, aux = self.predict(split)
        metrics = split_metrics(
            name, predictions, split.labels.cpu().numpy(), self.targets, self.spec, self.loss_tasks
        )
        metrics[f"{name}/loss"] = aux["loss"]
        if "gates" in aux:
            for k, task in enumerate(self.loss_tasks):
                for e, w in enumerate(aux["gates"][k]):
                    metrics[f"gate/{task.name}/expert_{e}"] = float(w)
            # expert collapse: entropy of each task's mean gate, mean use of each expert
            metrics.update(gate_statistics(aux["gates"], [t.name for t in self.loss_tasks]))
        return metrics


def strip_gates(metrics: dict[str, float]) -> dict[str, float]:
    return {k: v for k, v in metrics.items() if not k.startswith("gate/")}
