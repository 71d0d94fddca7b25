"""Nash-MTL: Navon, Shamsian, Achituve, Maron, Kawaguchi, Chechik & Fetaya, "Multi-Task Learning as
a Bargaining Game", ICML 2022.

On the shared rows of the shared parameters (geometry.py), with G [T, S] the task gradients (of
w_k L_k), the update is the Nash bargaining solution d = sum_k alpha_k g_k, alpha > 0 solving

    (G G^T) alpha = 1 / alpha   (elementwise),

i.e. every task's directional derivative <g_k, d> equals 1 / alpha_k. As in the authors' code, G G^T
is first divided by its Frobenius norm (so alpha does not depend on the gradients' overall
scale). alpha is the minimiser of the strictly convex f(alpha) = 1/2 alpha' K alpha - sum_k
log alpha_k, K = G G^T / ||G G^T|| + 1e-6 I (its gradient is K alpha - 1 / alpha); it is found
by damped Newton steps in float64 from alpha_k = 1 / sqrt(K_kk), the exact solution for
orthogonal gradients. The small ridge keeps alpha finite when gradients are linearly dependent
or a task's gradient is zero (the authors bound alpha by constraints of their convex-concave
procedure instead; no solver library is needed here). Task-specific parameters get the plain sum
of their gradients. Exact under data parallelism: the task gradients are averaged over the ranks
before alpha is solved.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mtlrec.training.balance.base import register
from mtlrec.training.balance.geometry import CoefficientCombiner

RIDGE = 1e-6
MAX_ITERATIONS = 100
TOLERANCE = 1e-12  # on max_k |(K alpha)_k - 1 / alpha_k|


def bargaining_solution(gram: torch.Tensor) -> torch.Tensor:
    """alpha > 0 with (K alpha)_k = 1 / alpha_k, K = gram / ||gram||_F + RIDGE I (float64)."""
    scale = float(torch.linalg.matrix_norm(gram))
    t = gram.shape[0]
    if scale == 0.0:  # every task gradient is zero: nothing to bargain over
        return torch.zeros(t, dtype=gram.dtype, device=gram.device)
    k = gram / scale + RIDGE * torch.eye(t, dtype=gram.dtype, device=gram.device)

    def objective(a: torch.Tensor) -> float:
        return float(0.5 * a @ k @ a - torch.log(a).sum())

    alpha = 1.0 / k.diagonal().sqrt()
    value = objective(alpha)
    for _ in range(MAX_ITERATIONS):
        gradient = k @ alpha - 1.0 / alpha
        if float(gradient.abs().max()) < TOLERANCE:
            break
        hessian = k + torch.diag(1.0 / alpha**2)
        newton = torch.linalg.solve(hessian, gradient)
        step = 1.0
        while True:  # stay positive and decrease f (Armijo)
            candidate = alpha - step * newton
            if bool((candidate > 0).all()):
                new_value = objective(candidate)
                if new_value <= value - 1e-4 * step * float(gradient @ newton):
                    break
            step /= 2
            if step < 1e-12:
                return alpha
        alpha, value = candidate, new_value
    return alpha


@register("nash_mtl")
class NashMTL(CoefficientCombiner):
    @dataclass(frozen=True)
    class Config:
        pass  # the method has no hyper-parameter beyond the optimizer's

    def coefficients(self, gram: torch.Tensor) -> torch.Tensor:
        return bargaining_solution(gram)
