"""What every balancer is: an nn.Module turning a batch's per-task mean losses into gradients.

A balancer gets the per-task mean losses L [T] of a batch (and an optional model-specific extra
term, e.g. AITM's calibrator, which is added unweighted and never balanced), writes the gradients
into `.grad` and reports its current task weights once per epoch (`weight/{task}` in
history.csv). Its parameters (uncertainty's log-variances, GradNorm's weights) are trained by the
run's optimizer and saved in checkpoints with its buffers.

A balancer class declares:

* `Config`: a dataclass of its `balance.*` keys (checked by mtlrec.config_schema.build: a wrong
  key or type is one line);
* `writes_grads`: True when `backward` builds gradients with torch.autograd.grad instead of
  `.backward()` (PCGrad, GradNorm). DDP's hooks never see those, so under data parallelism the
  training forward runs under `no_sync()` and the balancer itself averages what it computes over
  the ranks (mtlrec.training.distributed.collectives) and writes gradients that are the same on
  every rank. False: DDP averages the model's gradients, GradSync the balancer's own.

It registers itself with `@register("name")`; mtlrec/training/balance/__init__.py imports every
module of this package, so a new balancer is its code file plus its conf/balance/<name>.yaml.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar, TypeVar

import torch
from torch import nn

from mtlrec.data.spec import TaskSpec

BALANCERS: dict[str, type[Balancer]] = {}

B = TypeVar("B", bound="type[Balancer]")


def register(name: str) -> Callable[[B], B]:
    def deco(cls: B) -> B:
        BALANCERS[name] = cls
        cls.name = name
        return cls

    return deco


class Balancer(nn.Module):
    """Base: static weights, plain weighted sum. Subclasses override `backward` / `current_weights`."""

    name: ClassVar[str] = "fixed"
    Config: ClassVar[type]
    writes_grads: ClassVar[bool] = False
    static_weights: torch.Tensor  # buffers, declared for the type checker

    def __init__(self, tasks: tuple[TaskSpec, ...], model: nn.Module, config: Any):
        super().__init__()
        self.config = config
        self.task_names = [t.name for t in tasks]
        self.num_tasks = len(tasks)
        self.register_buffer(
            "static_weights",
            torch.tensor([t.weight for t in tasks], dtype=torch.float32),
            persistent=False,
        )
        self._extra_sum: torch.Tensor | None = None
        self._extra_steps = 0

    # -- what the trainer calls -------------------------------------------------------------------
    def backward(
        self, losses: torch.Tensor, model: nn.Module, extra: torch.Tensor | None = None
    ) -> None:
        """Gradients of the balanced loss into `.grad` (the caller zeroed them)."""
        total = (self.current_weights() * losses).sum()
        (total + self._track_extra(extra)).backward()

    def current_weights(self) -> torch.Tensor:
        return self.static_weights

    def end_epoch(self) -> dict[str, float]:
        """Columns for this epoch's history row: the task weights (and method-specific values)."""
        row = {
            f"weight/{n}": float(w)
            for n, w in zip(self.task_names, self.current_weights().tolist(), strict=True)
        }
        if self._extra_sum is not None:
            row["train/extra_loss"] = float(self._extra_sum.item()) / max(self._extra_steps, 1)
            self._extra_sum, self._extra_steps = None, 0
        return row

    # -- helpers ---------------------------------------------------------------------------------
    def _track_extra(self, extra: torch.Tensor | None) -> torch.Tensor | float:
        if extra is None:
            return 0.0
        d = extra.detach()
        self._extra_sum = d if self._extra_sum is None else self._extra_sum + d
        self._extra_steps += 1
        return extra
