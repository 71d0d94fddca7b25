"""The common step of the gradient-geometry balancers (PCGrad, CAGrad, Nash-MTL, Aligned-MTL,
MetaBalance): per-task gradients on the shared rows, combined by a method-specific rule.

Each task's gradient of w_k L_k (its fixed weight) is taken by torch.autograd.grad. On the shared
rows of the shared parameters (sharing.py) the task gradients are flattened into G [T, S] and the
subclass's `combine(G, segments)` turns them into one update [S]; every other gradient (the
task-specific parameters, a packed tensor's task slices, the extra term) is the plain sum.

Under data parallelism G, the plain sums and the extra term's gradients are averaged over the
ranks in ONE all-reduce before `combine`: every rank combines the global batch's task gradients,
which is the single-process step (docs/distributed.md). `combine` must therefore be a function of
G (and the balancer's own state, the same on every rank) only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from mtlrec.data.spec import TaskSpec
from mtlrec.training.balance.sharing import SharedParamsBalancer, task_gradients
from mtlrec.training.distributed.collectives import average_tensors

Grads = list[torch.Tensor | None]


@dataclass(frozen=True)
class Segment:
    """Where one shared parameter's shared rows lie in a row of G."""

    param: int  # index in the balancer's parameter list
    start: int
    stop: int
    shape: tuple[int, ...]  # of the shared rows


class GradientCombiner(SharedParamsBalancer):
    """A SharedParamsBalancer whose subclass only says how task gradients G [T, S] combine."""

    def combine(self, grads: torch.Tensor, segments: list[Segment]) -> torch.Tensor:
        """The update [S] on the shared rows from the task gradients [T, S]."""
        raise NotImplementedError

    def segments(self, idx: list[int]) -> list[Segment]:
        assert self._params is not None
        out, offset = [], 0
        for i in idx:
            rows = self._rows[i]
            assert rows is not None
            shape = (int(rows.sum()), *self._params[i].shape[1:])
            n = math.prod(shape)
            out.append(Segment(i, offset, offset + n, shape))
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
        # Average over the ranks BEFORE combining (one all-reduce; identity in one process).
        n = len(params)
        averaged = average_tensors([flat, *plain, *extra_grads])
        flat, plain, extra_grads = averaged[0], averaged[1 : 1 + n], averaged[1 + n :]
        segments = self.segments(idx)
        merged = self.combine(flat, segments) if flat is not None else None
        merged_rows = {}
        if merged is not None:
            merged_rows = {s.param: merged[s.start : s.stop].view(s.shape) for s in segments}
        for i, p in enumerate(params):
            # plain sum of the task gradients; on shared rows, the combined update instead
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


class CoefficientCombiner(GradientCombiner):
    """A combiner whose update is a weighted sum of the task gradients, d = sum_k a_k g_k, with
    coefficients a [T] from the Gram matrix G G^T (CAGrad, Nash-MTL, Aligned-MTL). The epoch
    mean of a is logged as `{name}/coef/{task}`."""

    coef_sum: torch.Tensor
    coef_steps: torch.Tensor

    def __init__(self, tasks: tuple[TaskSpec, ...], model: nn.Module, config: Any):
        super().__init__(tasks, model, config)
        # persistent: a mid-epoch checkpoint resumes the epoch's mean exactly
        self.register_buffer("coef_sum", torch.zeros(self.num_tasks, dtype=torch.float64))
        self.register_buffer("coef_steps", torch.zeros((), dtype=torch.long))

    def coefficients(self, gram: torch.Tensor) -> torch.Tensor:
        """a [T] (float64) from the Gram matrix G G^T [T, T] (float64)."""
        raise NotImplementedError

    def combine(self, grads: torch.Tensor, segments: list[Segment]) -> torch.Tensor:
        g64 = grads.double()
        coef = self.coefficients(g64 @ g64.T)
        self.coef_sum += coef.detach()
        self.coef_steps += 1
        return (coef @ g64).to(grads.dtype)

    def end_epoch(self) -> dict[str, float]:
        row = super().end_epoch()
        if int(self.coef_steps):
            mean = (self.coef_sum / self.coef_steps).tolist()
            for name, a in zip(self.task_names, mean, strict=True):
                row[f"{self.name}/coef/{name}"] = float(a)
        self.coef_sum.zero_()
        self.coef_steps.zero_()
        return row
