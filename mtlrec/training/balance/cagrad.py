"""CAGrad: Liu, Liu, Jin, Stone & Liu, "Conflict-Averse Gradient Descent for Multi-task
Learning", NeurIPS 2021.

On the shared rows of the shared parameters (geometry.py), with g_k the gradient of w_k L_k and
g_0 = (1/T) sum_k g_k the average gradient, the update maximises the worst task's improvement in a
ball around g_0: d = argmax_d min_k <g_k, d> s.t. ||d - g_0|| <= c ||g_0||. Its dual, over the
simplex,

    w* = argmin_w  g_w . g_0 + c ||g_0|| ||g_w||,   g_w = sum_k w_k g_k,

gives d = g_0 + (c ||g_0|| / ||g_w*||) g_w*, divided by 1 + c^2 (`rescale`, as the authors'
code does by default) so that c does not change the step size much. c = 0 is the plain mean.
The T-variable dual is solved from the Gram matrix G G^T in float64 by projected gradient
descent with a backtracking line search (the authors run 20 steps of SGD on softmax logits; this
solver runs to convergence, so the update is the dual's solution, not an approximation of it).
Task-specific parameters get the plain sum of their gradients. Exact under data parallelism:
the task gradients are averaged over the ranks before the dual is solved.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from mtlrec.data.spec import TaskSpec
from mtlrec.errors import MtlrecError
from mtlrec.training.balance.base import register
from mtlrec.training.balance.geometry import CoefficientCombiner

MAX_ITERATIONS = 500
TOLERANCE = 1e-12  # on the change of w between two iterations


def project_to_simplex(v: torch.Tensor) -> torch.Tensor:
    """The Euclidean projection of v [T] onto {w >= 0, sum w = 1} (the sort-based algorithm)."""
    u, _ = torch.sort(v, descending=True)
    cumulative = torch.cumsum(u, 0) - 1
    ks = torch.arange(1, len(v) + 1, dtype=v.dtype, device=v.device)
    rho = int(torch.nonzero(u - cumulative / ks > 0)[-1])
    return torch.clamp(v - cumulative[rho] / (rho + 1), min=0)


def cagrad_dual(gram: torch.Tensor, c: float) -> torch.Tensor:
    """w* on the simplex minimising w . b + c ||g_0|| sqrt(w' M w), M = gram, b = M 1 / T."""
    t = gram.shape[0]
    b = gram.sum(1) / t  # b_k = g_k . g_0
    radius = c * float(gram.sum().clamp_min(0).sqrt()) / t  # c ||g_0||

    def objective(w: torch.Tensor) -> float:
        return float(w @ b + radius * (w @ gram @ w).clamp_min(0).sqrt())

    w = torch.full((t,), 1.0 / t, dtype=gram.dtype, device=gram.device)
    value, step = objective(w), 1.0 / max(float(gram.diagonal().sum()), 1e-30)
    for _ in range(MAX_ITERATIONS):
        norm = (w @ gram @ w).clamp_min(1e-30).sqrt()
        gradient = b + radius * (gram @ w) / norm
        while True:  # backtracking (Armijo on the projected step)
            candidate = project_to_simplex(w - step * gradient)
            moved = candidate - w
            new_value = objective(candidate)
            if new_value <= value + float(gradient @ moved) + float(moved @ moved) / (2 * step):
                break
            step /= 2
            if step < 1e-30:
                return w
        w, value = candidate, new_value
        step *= 2  # try a longer step next time
        if float(moved.abs().max()) < TOLERANCE:
            break
    return w


@register("cagrad")
class CAGrad(CoefficientCombiner):
    @dataclass(frozen=True)
    class Config:
        c: float = 0.4  # radius of the ball around the average gradient, in units of ||g_0||
        rescale: bool = True  # divide the update by 1 + c^2 (the authors' default)

        def validate(self) -> None:
            if not self.c >= 0:
                raise MtlrecError(f"balance.c must be >= 0, got {self.c!r}")

    def __init__(self, tasks: tuple[TaskSpec, ...], model: nn.Module, config: Config):
        super().__init__(tasks, model, config)
        self.c = float(config.c)
        self.rescale = bool(config.rescale)

    def coefficients(self, gram: torch.Tensor) -> torch.Tensor:
        """a with d = sum_k a_k g_k: a = (1/T + lambda w*) / (1 + c^2), lambda = c||g_0||/||g_w||."""
        t = gram.shape[0]
        w = cagrad_dual(gram, self.c)
        g0_norm = float(gram.sum().clamp_min(0).sqrt()) / t
        gw_norm = float((w @ gram @ w).clamp_min(0).sqrt())
        lam = self.c * g0_norm / (gw_norm + 1e-12) if g0_norm > 0 else 0.0
        coef = torch.full_like(w, 1.0 / t) + lam * w
        return coef / (1 + self.c**2) if self.rescale else coef
