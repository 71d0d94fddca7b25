"""Gradient averaging: DistributedDataParallel around the model, plus what DDP's hooks miss.

DDP averages the model's gradients during `.backward()`:

    g = 1/W * sum_r grad(mean loss over rank r's rows)

so with equal shards an unmasked task's gradient is the single-process gradient of the W*b-row
global batch. What DDP does not see is averaged here after the balancer's backward:

* the balancer's own parameters (uncertainty's log-variances), always;
* nothing else for a balancer with `writes_grads = True` (PCGrad, GradNorm): it builds the
  gradients with torch.autograd.grad, which DDP's hooks never see, so the training forward runs
  under `no_sync()` and the balancer itself averages the per-task gradients over the ranks before
  projecting / taking norms (the single-process algorithm on the global batch) and writes
  gradients that are already the same on every rank.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable

import torch
from torch import nn

from mtlrec.errors import MtlrecError
from mtlrec.training import signals
from mtlrec.training.distributed.collectives import average_gradients
from mtlrec.training.distributed.context import current

# Tests: "RANK:STEP" makes that rank fail at that training step (this process's steps, counted
# from 1); "RANK:STEP:kill" kills it there with SIGKILL (a hard death: no checkpoint, no
# cleanup); "RANK:STEP:term" sends SIGTERM to the launcher, as a scheduler would (forwarded to
# every rank: the graceful stop).
FAULT_ENV = "MTLREC_DIST_FAULT"


class GradSync:
    """What the training step calls around the balancer's backward (see the module docstring)."""

    def __init__(
        self,
        ddp: nn.parallel.DistributedDataParallel | None,
        model: nn.Module,
        balancer: nn.Module,
        manual: bool,
    ):
        self.ddp, self.manual = ddp, manual
        # A balancer that writes gradients itself averages all of them (its own included).
        self.params = [] if manual else [p for p in balancer.parameters() if p.requires_grad]
        self.steps = 0
        fault = os.environ.get(FAULT_ENV, "").split(":")
        self.fault = (int(fault[0]), int(fault[1])) if len(fault) > 1 else None
        self.fault_kind = fault[2] if len(fault) > 2 else "fail"

    def forward_context(self) -> contextlib.AbstractContextManager:
        if self.ddp is not None and self.manual:
            return self.ddp.no_sync()
        return contextlib.nullcontext()

    def after_backward(self) -> None:
        ctx = current()
        self.steps += 1
        if self.fault is not None and self.fault == (ctx.rank, self.steps):
            if self.fault_kind == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            if self.fault_kind == "term":
                seen = len(signals.received)
                os.kill(os.getppid(), signal.SIGTERM)
                _await_forwarded(seen)
                return
            raise MtlrecError(
                f"{FAULT_ENV}: injected failure on rank {ctx.rank} at step {self.steps}"
            )
        average_gradients(self.params)


def _await_forwarded(seen: int, timeout_s: float = 60.0) -> None:
    """Wait until the launcher has forwarded the SIGTERM to this rank too: the ranks agree on a
    stop at this very step (any rank's request stops them all), however late the forwarding
    comes on a loaded machine, so a test can count on the step it asked for."""
    deadline = time.monotonic() + timeout_s
    while len(signals.received) == seen and time.monotonic() < deadline:
        time.sleep(0.005)


def check_sparse_backend(model: nn.Module, backend: str | None) -> None:
    """nccl has no sparse all-reduce: sparse embedding gradients under it are one line."""
    from mtlrec.training.optimizers import sparse_parameters

    if backend == "nccl" and any(True for _ in sparse_parameters(model)):
        raise MtlrecError(
            "trainer.embedding_optimizer chose sparse gradients for an embedding table, and the "
            "nccl backend (trainer.devices > 1 on GPUs) has no sparse all-reduce; use "
            "trainer.embedding_optimizer=adam (dense gradients), or one GPU (docs/distributed.md)"
        )


def data_parallel(
    model: nn.Module,
    forward: Callable,
    device: torch.device,
    balancer: nn.Module,
    balance_name: str | None = None,  # unused: the balancer's `writes_grads` says it
    compile_model: bool = False,
) -> tuple[Callable, GradSync]:
    """(the training forward, its GradSync): DDP around the model once the process group is up."""
    if not current().active:
        return forward, GradSync(None, model, balancer, manual=False)
    check_sparse_backend(model, current().backend)
    ddp = nn.parallel.DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None
    )
    manual = bool(getattr(balancer, "writes_grads", False))
    train_forward = torch.compile(ddp) if compile_model else ddp
    return train_forward, GradSync(ddp, model, balancer, manual)
