"""What happens once per optimizer step: accumulation, loss scaling, clipping, the lr schedule, EMA.

`Trainer.step(batch)` runs a batch's forward pass and hands its per-task loss sums to
`OptimizerStep.add`. With `trainer.accumulate_batches=N` the step waits for N batches (or the
epoch's last one): the task balancer then gets the per-task means over all rows of the N batches
(sum of the batches' loss sums / sum of their row counts: the means of the concatenated batch)
and runs ONE backward pass, so balancers, gradient clipping, the optimizer (dense Adam, RowAdam's
sparse rows summed over the batches), the lr schedule and the EMA all act once per optimizer
step, exactly as for one batch of N x batch_size rows. The batches' forward graphs are kept
until that backward pass (what makes every balancer exact, PCGrad and GradNorm included): the
activations of N batches are held at once, the forward passes themselves stay batch_size rows.

`trainer.precision=fp16` (CUDA): torch.amp.GradScaler. The gradient flowing from the balanced
loss into the model is multiplied by the scale (a hook on the per-task losses and the model's
extra term), unscaled before clipping; a step whose gradients hold inf/NaN is skipped and the
scale lowered. Balancers with learned weights or their own gradients are refused with fp16 (their
terms are not part of the scaled loss); bf16 needs no scaler and works with every balancer.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from mtlrec.errors import MtlrecError
from mtlrec.training.balance import Balancer, BalanceSettings
from mtlrec.training.ema import WeightEma
from mtlrec.training.objective import clip_per_task, task_means
from mtlrec.training.optimizers import MultiOptimizer, clip_grad_norm
from mtlrec.training.schedule import LrSchedule

log = logging.getLogger(__name__)


class PendingLosses:
    """The per-task loss sums (with their graphs) and row counts of the batches of one step."""

    def __init__(self) -> None:
        self.sums: torch.Tensor | None = None
        self.counts: torch.Tensor | None = None
        self.extra: torch.Tensor | None = None
        self.batches = 0

    def add(self, sums: torch.Tensor, counts: torch.Tensor, extra: torch.Tensor | None) -> None:
        self.sums = sums if self.sums is None else self.sums + sums
        self.counts = counts if self.counts is None else self.counts + counts
        if extra is not None:
            self.extra = extra if self.extra is None else self.extra + extra
        self.batches += 1

    def take(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(per-task means over every row of the step's batches, the mean extra term)."""
        assert self.sums is not None and self.counts is not None
        means = task_means(self.sums, self.counts)
        extra = None if self.extra is None else self.extra / self.batches
        self.__init__()  # type: ignore[misc]
        return means, extra


class OptimizerStep:
    def __init__(
        self,
        model: nn.Module,
        optimizer: MultiOptimizer,
        balancer: Balancer,
        grad_sync: Any,
        grad_clip_norm: float | None,
        clip_groups: Any,
        schedule: LrSchedule,
        scaler: torch.amp.GradScaler | None,
        ema: WeightEma | None,
    ):
        self.model, self.optimizer, self.balancer = model, optimizer, balancer
        self.grad_sync, self.grad_clip_norm, self.clip_groups = (
            grad_sync,
            grad_clip_norm,
            clip_groups,
        )
        self.schedule, self.scaler, self.ema = schedule, scaler, ema
        self.pending = PendingLosses()
        self.steps = 0  # optimizer steps over the run (Trainer.global_step)
        self.last_losses: torch.Tensor | None = None  # the last step's per-task mean losses

    def add(self, sums: torch.Tensor, counts: torch.Tensor, extra: torch.Tensor | None) -> None:
        self.pending.add(sums, counts, extra)

    def apply(self) -> None:
        """Backward through the balancer on the pending batches, clip, step, schedule, EMA."""
        means, extra = self.pending.take()
        self.last_losses = means.detach()  # read by the metric logger every N steps (no sync here)
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            scale = self.scaler.scale(torch.ones((), device=means.device))  # inits the scaler
            means.register_hook(lambda g: g * scale)
            if extra is not None and extra.requires_grad:
                extra.register_hook(lambda g: g * scale)
        self.balancer.backward(means, self.model, extra)
        self.grad_sync.after_backward()
        if self.scaler is not None:
            for part in self.optimizer.optimizers:
                self.scaler.unscale_(part)
        if self.grad_clip_norm is not None:
            if self.clip_groups is not None:
                clip_per_task(self.clip_groups, self.grad_clip_norm)
            else:  # dense and sparse (row-wise) gradients alike
                clip_grad_norm(self.model.parameters(), self.grad_clip_norm)
        if self.scaler is None:
            self.optimizer.step()
        else:  # each part skips its step when the unscaled gradients hold inf/NaN
            for part in self.optimizer.optimizers:
                self.scaler.step(part)
            self.scaler.update()
        self.steps += 1
        self.schedule.after_step(self.steps)
        if self.ema is not None:
            self.ema.update()

    @property
    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"schedule": self.schedule.state_dict()}
        if self.scaler is not None:
            state["scaler"] = self.scaler.state_dict()
        if self.ema is not None:
            state["ema"] = self.ema.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """A checkpoint's step state (written before schedules existed: empty, nothing to load)."""
        if "schedule" in state:
            self.schedule.load_state_dict(state["schedule"])
        if self.scaler is not None and "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])
        if self.ema is not None and "ema" in state:
            self.ema.load_state_dict(state["ema"])


def check_step_settings(trainer: Any, device_type: str, balance: BalanceSettings) -> None:
    """Combinations the optimizer step refuses, one line each, before anything is written."""

    if trainer.precision == "fp16":
        on_cpu = device_type == "cpu" or (device_type == "auto" and not torch.cuda.is_available())
        if on_cpu:
            raise MtlrecError(
                "trainer.precision=fp16 needs a CUDA GPU (autocast float16 + GradScaler) but this "
                "run trains on the CPU; use trainer.precision=bf16 or fp32 on the CPU"
            )
        if balance.cls.writes_grads:
            raise MtlrecError(
                f"trainer.precision=fp16 scales the loss for GradScaler, which balance={balance.name} "
                "(its own gradients) does not see; use trainer.precision=bf16 "
                "with it"
            )
    if trainer.accumulate_batches > 1 and trainer.devices > 1:
        raise MtlrecError(
            f"trainer.accumulate_batches={trainer.accumulate_batches} does not work with "
            f"trainer.devices={trainer.devices} yet; raise trainer.batch_size or use one device"
        )


def make_scaler(
    trainer: Any, device: torch.device, balancer: Balancer
) -> torch.amp.GradScaler | None:
    """fp16's GradScaler (None for fp32/bf16); refuses a balancer with learned weights."""
    if trainer.precision == "bf16" and device.type == "cpu" and not cpu_has_native_bf16():
        # Without AVX512-BF16/AMX, oneDNN emulates bfloat16 matmuls: measured ~7x SLOWER than
        # fp32 (docs/performance.md), the opposite of what the user asked bf16 for.
        log.warning(
            "trainer.precision=bf16: this CPU has no native bfloat16 (AVX512-BF16/AMX), so "
            "bf16 matmuls are emulated and slower than fp32; use trainer.precision=fp32 here"
        )
    if trainer.precision != "fp16":
        return None
    if list(balancer.parameters()):
        raise MtlrecError(
            f"trainer.precision=fp16 scales the loss for GradScaler, which balance={balancer.name}'s "
            "learned weights do not see; use trainer.precision=bf16 with it"
        )
    return torch.amp.GradScaler(device.type)


def cpu_has_native_bf16() -> bool:
    """Whether oneDNN runs bfloat16 matmuls natively on this CPU (AVX512-BF16 or AMX)."""
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
