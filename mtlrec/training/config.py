"""The `trainer` config group (conf/trainer/*.yaml) as a typed dataclass.

Lives in the training layer, which reads it; mtlrec.settings builds it with the other groups
(config_schema.build: types first, then `validate()` for ranges and combinations).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

from mtlrec import metric_registry
from mtlrec.errors import MtlrecError
from mtlrec.training.ema import check_ema_decay

# lr schedules (built by training/schedule.py, which reads this config; checked here)
SCHEDULES = ("constant", "step", "cosine", "linear", "exponential", "plateau")


def check_schedule(cfg: TrainerConfig) -> None:
    """One line per bad schedule setting (called by TrainerConfig.validate)."""
    for key in ("lr_schedule", "embedding_lr_schedule"):
        value = getattr(cfg, key)
        if value is None and key == "embedding_lr_schedule":
            continue
        if value not in SCHEDULES:
            raise MtlrecError(
                f"trainer.{key}={value!r} is unknown; use one of {', '.join(SCHEDULES)}"
            )
    for key in ("warmup_steps", "lr_step_size", "lr_plateau_patience"):
        value = getattr(cfg, key)
        low = 0 if key == "warmup_steps" else 1
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise MtlrecError(f"trainer.{key} must be an integer >= {low}, got {value!r}")
    if not (isinstance(cfg.lr_gamma, (int, float)) and 0 < cfg.lr_gamma < 1):
        raise MtlrecError(f"trainer.lr_gamma must be in (0, 1), got {cfg.lr_gamma!r}")
    if not (isinstance(cfg.lr_min_factor, (int, float)) and 0 <= cfg.lr_min_factor < 1):
        raise MtlrecError(f"trainer.lr_min_factor must be in [0, 1), got {cfg.lr_min_factor!r}")
    lr = cfg.embedding_lr
    if lr is not None and not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise MtlrecError(f"trainer.embedding_lr must be > 0 or null, got {lr!r}")


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
    # The last short batch of an epoch: merged into the one before (every row trains, no batch of
    # one row reaches batch norm), dropped, or kept as its own step (mtlrec.training.batches).
    tail_batch: Literal["merge", "drop", "keep"] = "merge"
    # Weigh each task's loss by the dataset's sample weight columns (a weighted mean per batch,
    # training/objective.py); false: every row weighs 1.
    sample_weights: bool = True
    # How embedding tables train (mtlrec.training.optimizers): auto = row-wise Adam on sparse
    # gradients (rows absent from a batch caught up with dense Adam) for tables over 100k rows,
    # dense fused Adam for the rest.
    embedding_optimizer: Literal[
        "auto", "adam", "sparse_adam", "adagrad", "rowwise_adagrad", "sgd", "rowwise_adam"
    ] = "auto"
    # Where the tables live (mtlrec.training.torchrec_backend): native (FieldEmbedding, DDP
    # replicas) or torchrec (sharded by DistributedModelParallel, FBGEMM fused optimizers);
    # sharding forces TorchRec's sharding type, shard_memory_mb each rank's budget for the planner.
    embedding_backend: Literal["native", "torchrec"] = "native"
    sharding: Literal["auto", "table_wise", "column_wise", "row_wise", "data_parallel"] = "auto"
    shard_memory_mb: int | None = None
    # Whole splits on the GPU (true), in pinned host memory (false) or whichever fits (auto).
    data_on_device: Literal["auto"] | bool = "auto"
    # Also keep checkpoints/best_<task>.pt at each task's own best val epoch and test each task
    # with its own weights (mtlrec.training.per_task); early_stopping=all_tasks stops once every
    # task has stalled for `patience` epochs instead of when the monitored metric has.
    keep_best_per_task: bool = False
    early_stopping: Literal["monitor", "all_tasks"] = "monitor"
    # How ranking teams train (docs/training.md): lr schedule with warm-up (training/schedule.py),
    # gradient accumulation and fp16 (training/optim_step.py), weight EMA (training/ema.py).
    lr_schedule: str = "constant"
    warmup_steps: int = 0
    lr_step_size: int = 1000
    lr_gamma: float = 0.5
    lr_min_factor: float = 0.0
    lr_plateau_patience: int = 1
    embedding_lr: float | None = None
    embedding_lr_schedule: str | None = None
    accumulate_batches: int = 1
    ema_decay: float | None = None
    # Per-step scalars for the metric logger (lr, each task's loss, the balancer's weights) every
    # N optimizer steps (Lightning's default 50); the epoch's values are logged at every epoch.
    log_every_n_steps: int = 50

    def validate(self) -> None:
        if self.optimizer not in ("adam", "adamw"):
            raise MtlrecError(f"trainer.optimizer '{self.optimizer}' is unknown; use adam or adamw")
        for key in (
            "batch_size",
            "eval_batch_size",
            "epochs",
            "devices",
            "accumulate_batches",
            "log_every_n_steps",
        ):
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
        if self.precision not in ("fp32", "bf16", "fp16"):
            raise MtlrecError(
                f"trainer.precision '{self.precision}' is unknown; use fp32, bf16 or fp16"
            )
        if not isinstance(self.compile, bool):
            raise MtlrecError(f"trainer.compile must be true or false, got {self.compile!r}")
        if self.num_threads is not None and (
            not isinstance(self.num_threads, int) or self.num_threads < 1
        ):
            raise MtlrecError(
                f"trainer.num_threads must be an integer >= 1 or null, got {self.num_threads!r}"
            )
        if not isinstance(self.keep_best_per_task, bool):
            raise MtlrecError(
                f"trainer.keep_best_per_task must be true or false, got {self.keep_best_per_task!r}"
            )
        check_monitor_name(self.monitor, self.mode)
        check_schedule(self)
        check_ema_decay(self.ema_decay)


def check_monitor_name(monitor: str, mode: str) -> None:
    """trainer.monitor is `auto` or a validation metric the registry knows (its direction)."""
    if monitor == "auto":
        return
    parsed = metric_registry.parse(monitor)
    if parsed is None or parsed.split != "val":
        known = ", ".join(metric_registry.METRICS)
        raise MtlrecError(
            f"trainer.monitor={monitor!r}: not a validation metric; expected auto or "
            f"val/<task>_<metric> (e.g. val/ctr_auc, val/mean_auc, val/loss) with <metric> one of {known}"
        )
