"""PCGrad: Yu et al., "Gradient Surgery for Multi-Task Learning", NeurIPS 2020.

On the shared parameters (sharing.py), for each task i (in a random order of the other tasks j):

    g_i <- g_i - min(g_i . g_j, 0) / ||g_j||^2 g_j

then g = sum_i g_i; task-specific parameters get their plain gradient sum (geometry.py). The
task gradients are of w_k L_k (fixed weights). Under data parallelism every rank first averages the per-task
gradients over the ranks (one all-reduce), then projects the averaged ones: the single-process
algorithm on the global batch, the same update on every rank (docs/distributed.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from mtlrec.data.spec import TaskSpec
from mtlrec.training.balance.base import register
from mtlrec.training.balance.geometry import GradientCombiner, Segment


@register("pcgrad")
class PCGrad(GradientCombiner):
    conflicts: torch.Tensor

    @dataclass(frozen=True)
    class Config:
        seed: int = 0  # seeds the random order in which each task is projected onto the others

    def __init__(self, tasks: tuple[TaskSpec, ...], model: nn.Module, config: Config):
        super().__init__(tasks, model, config)
        self.generator = torch.Generator().manual_seed(config.seed)
        # conflicting task pairs (g_i . g_j < 0 on the shared parameters) and pairs seen this epoch
        self.register_buffer("conflicts", torch.zeros(()), persistent=False)
        self.pairs = 0

    def get_extra_state(self) -> dict:
        # the projection order's generator, so a resumed run draws the same orders
        return {"generator": self.generator.get_state()}

    def set_extra_state(self, state: dict) -> None:
        self.generator.set_state(state["generator"])

    @staticmethod
    def project(grads: torch.Tensor, orders: list[list[int]]) -> torch.Tensor:
        """PCGrad on flattened task gradients [T, P]: the sum of the projected gradients [P].

        orders[i] is the order in which task i is projected against the others. No host sync:
        the "if conflicting" test is min(dot, 0).
        """
        out = []
        sq = (grads * grads).sum(1).clamp_min(1e-20)
        for i in range(grads.shape[0]):
            g = grads[i].clone()
            for j in orders[i]:
                dot = torch.dot(g, grads[j])
                g = g - dot.clamp(max=0.0) / sq[j] * grads[j]
            out.append(g)
        return torch.stack(out).sum(0)

    def _orders(self) -> list[list[int]]:
        t, orders = self.num_tasks, []
        for i in range(t):
            others = [j for j in range(t) if j != i]
            perm = torch.randperm(len(others), generator=self.generator).tolist()
            orders.append([others[p] for p in perm])
        return orders

    def combine(self, grads: torch.Tensor, segments: list[Segment]) -> torch.Tensor:
        """The projected sum [S] of the (rank-averaged) task gradients on the shared rows."""
        merged = self.project(grads, self._orders())
        dots = grads @ grads.T
        self.conflicts += (dots.triu(1) < 0).sum()
        self.pairs += self.num_tasks * (self.num_tasks - 1) // 2
        return merged

    def end_epoch(self) -> dict[str, float]:
        row = super().end_epoch()
        if self.pairs:
            row["pcgrad/conflict_rate"] = float(self.conflicts.item()) / self.pairs
        self.conflicts.zero_()
        self.pairs = 0
        return row
