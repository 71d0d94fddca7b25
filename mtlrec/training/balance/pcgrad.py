"""PCGrad: Yu et al., "Gradient Surgery for Multi-Task Learning", NeurIPS 2020.

On the shared parameters (sharing.py), for each task i (in a random order of the other tasks j):

    g_i <- g_i - min(g_i . g_j, 0) / ||g_j||^2 g_j

then g = sum_i g_i; task-specific parameters get their plain gradient sum. The task gradients are
of w_k L_k (fixed weights). Under data parallelism every rank first averages the per-task
gradients over the ranks (one all-reduce), then projects the averaged ones: the single-process
algorithm on the global batch, the same update on every rank (docs/distributed.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from mtlrec.data.spec import TaskSpec
from mtlrec.training.balance.base import register
from mtlrec.training.balance.sharing import SharedParamsBalancer, task_gradients
from mtlrec.training.distributed.collectives import average_tensors

Grads = list[torch.Tensor | None]


@register("pcgrad")
class PCGrad(SharedParamsBalancer):
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

    def _projected_rows(self, flat: torch.Tensor, idx: list[int]) -> dict[int, torch.Tensor]:
        """The projected sum on each shared parameter's shared rows {param index: rows}."""
        assert self._params is not None
        merged = self.project(flat, self._orders())
        dots = flat @ flat.T
        self.conflicts += (dots.triu(1) < 0).sum()
        self.pairs += self.num_tasks * (self.num_tasks - 1) // 2
        out, offset = {}, 0
        for i in idx:
            rows = self._rows[i]
            assert rows is not None
            shape = (int(rows.sum()), *self._params[i].shape[1:])
            n = math.prod(shape)
            out[i] = merged[offset : offset + n].view(shape)
            offset += n
        return out

    def _local_parts(self, grads: list[Grads], idx: list[int]) -> tuple[torch.Tensor | None, Grads]:
        """(the tasks' gradients on the shared rows, flattened [T, S]; each parameter's plain
        sum of the task gradients) of this rank's rows."""
        assert self._params is not None
        params, rows, t = self._params, self._rows, self.num_tasks

        def shared_part(k: int, i: int) -> torch.Tensor:
            g = grads[k][i]
            return (g if g is not None else torch.zeros_like(params[i]))[rows[i]].reshape(-1)

        flat = None
        if idx:
            flat = torch.stack([torch.cat([shared_part(k, i) for i in idx]) for k in range(t)])
        plain: Grads = []
        for i in range(len(params)):
            parts = [g for g in (grads[k][i] for k in range(t)) if g is not None]
            plain.append(torch.stack(parts).sum(0) if parts else None)
        return flat, plain

    def backward(
        self, losses: torch.Tensor, model: nn.Module, extra: torch.Tensor | None = None
    ) -> None:
        weighted = self.current_weights() * losses
        self._ensure_layout(weighted, model)
        params, rows = self._params, self._rows
        assert params is not None
        grads = task_gradients(weighted, params)
        extra_grads: Grads = [None] * len(params)
        extra_term = self._track_extra(extra)
        if isinstance(extra_term, torch.Tensor):
            extra_grads = list(torch.autograd.grad(extra_term, params, allow_unused=True))
        idx = [i for i, m in enumerate(rows) if m is not None]
        flat, plain = self._local_parts(grads, idx)
        # Average over the ranks BEFORE projecting (one all-reduce; identity in one process).
        n = len(params)
        averaged = average_tensors([flat, *plain, *extra_grads])
        flat, plain, extra_grads = averaged[0], averaged[1 : 1 + n], averaged[1 + n :]
        merged_rows = self._projected_rows(flat, idx) if flat is not None else {}
        for i, p in enumerate(params):
            # plain sum of the task gradients; on shared rows, the projected sum instead
            if plain[i] is None and extra_grads[i] is None:
                continue
            g = plain[i]
            if g is None:
                g = torch.zeros_like(p)
            if i in merged_rows:
                g[rows[i]] = merged_rows[i]
            e = extra_grads[i]
            if e is not None:
                g = g + e
            p.grad = g if p.grad is None else p.grad + g

    def end_epoch(self) -> dict[str, float]:
        row = super().end_epoch()
        if self.pairs:
            row["pcgrad/conflict_rate"] = float(self.conflicts.item()) / self.pairs
        self.conflicts.zero_()
        self.pairs = 0
        return row
