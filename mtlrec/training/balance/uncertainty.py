"""Uncertainty weighting: Kendall, Gal & Cipolla, "Multi-Task Learning Using Uncertainty to Weigh
Losses for Scene Geometry and Semantics", CVPR 2018.

With s_k = log sigma_k^2 learned:

    regression     1/(2 sigma_k^2) L_k + log sigma_k = 0.5 exp(-s_k) L_k + s_k / 2
    classification 1/sigma_k^2 L_k + log sigma_k     =     exp(-s_k) L_k + s_k / 2

logged weight = 0.5 exp(-s_k) (regression) or exp(-s_k) (binary).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from mtlrec.data.spec import TaskSpec
from mtlrec.errors import MtlrecError
from mtlrec.training.balance.base import Balancer, register


@register("uncertainty")
class Uncertainty(Balancer):
    scale: torch.Tensor

    @dataclass(frozen=True)
    class Config:
        init_log_var: float = 0.0  # initial s_k of every task (0: weight 1 for binary tasks)

        def validate(self) -> None:
            if not math.isfinite(self.init_log_var):
                raise MtlrecError(
                    f"balance.init_log_var must be a finite number, got {self.init_log_var!r}"
                )

    def __init__(self, tasks: tuple[TaskSpec, ...], model: nn.Module, config: Config):
        super().__init__(tasks, model, config)
        init = float(config.init_log_var)
        self.log_vars = nn.Parameter(torch.full((self.num_tasks,), init))  # s_k = log sigma_k^2
        # 1 for classification (1/sigma^2 L), 1/2 for regression (1/(2 sigma^2) L)
        self.register_buffer(
            "scale",
            torch.tensor([0.5 if t.type == "regression" else 1.0 for t in tasks]),
            persistent=False,
        )

    def loss(self, losses: torch.Tensor) -> torch.Tensor:
        return (self.scale * torch.exp(-self.log_vars) * losses + 0.5 * self.log_vars).sum()

    def backward(
        self, losses: torch.Tensor, model: nn.Module, extra: torch.Tensor | None = None
    ) -> None:
        (self.loss(losses) + self._track_extra(extra)).backward()

    def current_weights(self) -> torch.Tensor:
        return (self.scale * torch.exp(-self.log_vars)).detach()

    def end_epoch(self) -> dict[str, float]:
        row = super().end_epoch()
        for n, s in zip(self.task_names, self.log_vars.tolist(), strict=True):
            row[f"log_var/{n}"] = float(s)
        return row
