"""Random Loss Weighting: Lin, Ye, Xu, Shi & Zhang, "Reasonable Effectiveness of Random Weighting:
A Litmus Test for Multi-Task Learning", TMLR 2022.

At every step new weights are drawn, lambda = softmax(z), z ~ N(0, I_T) (the paper's normal
distribution, as LibMTL's default), and the step minimises sum_k lambda_k w_k L_k (w_k the task's
own weight). The draws come from the balancer's own generator seeded by `balance.seed`: the same
on every rank under data parallelism (so the step is the single-process one), saved in
checkpoints (a resumed run draws the same weights). `weight/{task}` in history.csv is the epoch
mean of lambda_k w_k; the validation loss weighs the tasks by their expectation w_k / T.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from mtlrec.data.spec import TaskSpec
from mtlrec.training.balance.base import Balancer, register


@register("rlw")
class RandomLossWeighting(Balancer):
    weight_sum: torch.Tensor
    weight_steps: torch.Tensor

    @dataclass(frozen=True)
    class Config:
        seed: int = 0  # seeds the random weights of every step

    def __init__(self, tasks: tuple[TaskSpec, ...], model: nn.Module, config: Config):
        super().__init__(tasks, model, config)
        self.generator = torch.Generator().manual_seed(config.seed)
        # the epoch's drawn weights (persistent: a mid-epoch checkpoint resumes the mean exactly)
        self.register_buffer("weight_sum", torch.zeros(self.num_tasks))
        self.register_buffer("weight_steps", torch.zeros((), dtype=torch.long))

    def get_extra_state(self) -> dict:
        return {"generator": self.generator.get_state()}

    def set_extra_state(self, state: dict) -> None:
        self.generator.set_state(state["generator"])

    def draw(self) -> torch.Tensor:
        """lambda = softmax(z), z ~ N(0, I) from the balancer's generator (on the CPU)."""
        return torch.softmax(torch.randn(self.num_tasks, generator=self.generator), 0)

    def backward(
        self, losses: torch.Tensor, model: nn.Module, extra: torch.Tensor | None = None
    ) -> None:
        weights = self.draw().to(losses.device) * self.static_weights
        self.weight_sum += weights
        self.weight_steps += 1
        ((weights * losses).sum() + self._track_extra(extra)).backward()

    def current_weights(self) -> torch.Tensor:
        return self.static_weights / self.num_tasks  # E[lambda_k] = 1 / T

    def end_epoch(self) -> dict[str, float]:
        row = super().end_epoch()
        if int(self.weight_steps):
            mean = (self.weight_sum / self.weight_steps).tolist()
            row.update(
                {f"weight/{n}": float(w) for n, w in zip(self.task_names, mean, strict=True)}
            )
        self.weight_sum.zero_()
        self.weight_steps.zero_()
        return row
