"""Dynamic Weight Average: Liu, Johns & Davison, "End-to-End Multi-Task Learning with Attention",
CVPR 2019.

    w_k(t) = T exp(r_k(t-1) / temperature) / sum_j exp(r_j(t-1) / temperature),
    r_k(t-1) = L_k(t-1) / L_k(t-2)   (epoch means of the training loss);

w_k = 1 for the first two epochs. Under data parallelism the next weights come from rank 0's
epoch losses and are broadcast (the trainer's broadcast_state).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from mtlrec.data.spec import TaskSpec
from mtlrec.errors import MtlrecError
from mtlrec.training.balance.base import Balancer, register


@register("dwa")
class DynamicWeightAverage(Balancer):
    weights: torch.Tensor
    previous: torch.Tensor
    epoch_sum: torch.Tensor
    epoch_steps: torch.Tensor

    @dataclass(frozen=True)
    class Config:
        temperature: float = 2.0  # softness of the weighting (large = equal weights)

        def validate(self) -> None:
            if not self.temperature > 0:
                raise MtlrecError(f"balance.temperature must be > 0, got {self.temperature!r}")

    def __init__(self, tasks: tuple[TaskSpec, ...], model: nn.Module, config: Config):
        super().__init__(tasks, model, config)
        self.temperature = float(config.temperature)
        t = self.num_tasks
        self.register_buffer("weights", torch.ones(t))
        # epoch-mean losses of the last two finished epochs (NaN until there are two)
        self.register_buffer("previous", torch.full((2, t), math.nan))
        self.register_buffer("epoch_sum", torch.zeros(t))
        self.register_buffer("epoch_steps", torch.zeros(()))

    @staticmethod
    def weights_from(
        last: torch.Tensor, before_last: torch.Tensor, temperature: float
    ) -> torch.Tensor:
        """w_k = T softmax_k(r_k / temperature), r_k = L_k(t-1) / L_k(t-2)."""
        r = last / before_last.clamp_min(1e-12)
        return len(r) * torch.softmax(r / temperature, dim=0)

    def backward(
        self, losses: torch.Tensor, model: nn.Module, extra: torch.Tensor | None = None
    ) -> None:
        self.epoch_sum += losses.detach()
        self.epoch_steps += 1
        super().backward(losses, model, extra)

    def current_weights(self) -> torch.Tensor:
        return self.weights

    def end_epoch(self) -> dict[str, float]:
        row = super().end_epoch()  # the weights used during this epoch
        mean = self.epoch_sum / self.epoch_steps.clamp_min(1)
        self.previous.copy_(torch.stack([mean, self.previous[0]]))
        if not torch.isnan(self.previous[1]).any():
            self.weights.copy_(
                self.weights_from(self.previous[0], self.previous[1], self.temperature)
            )
        self.epoch_sum.zero_()
        self.epoch_steps.zero_()
        return row
