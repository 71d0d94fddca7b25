"""Dense Adam's steps with a zero gradient, summed in closed form (RowAdam's catch-up).

A row last updated at step L, with moments m, v, that dense Adam then steps with a zero
gradient at steps u = L+1..t, moves at step u (j = u - L) by

    lr * (b1^j m / (1 - b1^u)) / (sqrt(b2^j v / (1 - b2^u)) + eps)
      = lr * m * a_u / (sqrt(v) + eps * a_u / b_u),
    a_u = r^j sqrt(1 - b2^u) / (1 - b1^u),  r = b1 / sqrt(b2),   (the eps-free step)
    b_u = b1^j / (1 - b1^u)                                       (the eps-dominated step).

Without eps the sum over u is lr * m / sqrt(v) * sum a_u; when v is tiny (gradients near eps)
eps dominates and the sum is lr * m / eps * sum b_u; in between it is neither. The missed steps
are split into pieces j = 1 | 2-3 | 4-7 | 8-15 | 16-31 | 32+ and each piece P is summed as

    sum_{u in P} a_u / (sqrt(v) + eps * a_u / b_u)  ~  A / (sqrt(v) + eps * A / B),
    A = sum_{u in P} a_u,  B = sum_{u in P} b_u,

which is exact for a one-step piece, exact as eps -> 0 and exact as v -> 0, and in between
off by at most (measured against the step-by-step sum for L = 0..5000, missed steps 1..3000,
sqrt(v) / eps = 1e-4..1e4; tests/training/test_sparse_row_adam.py) 2e-3 of the drift for rows
last updated in Adam's first 2 steps, 1e-4 from step 50 on, 2e-6 from step 1000 on: the pieces
are where a_u / b_u = sqrt(1 - b2^u) b2^(-j/2) varies least. A and B come from suffix-sum tables
up to step EXACT_UNTIL; above it the bias correction is taken at the piece's first step (it
then changes < 2e-6 per step), a geometric sum. Cost: per missed row, a few float64 scalars per
piece, and three elementwise operations per piece on the row.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

# The sums are exact up to this step; beyond, the bias correction (then changing < 2e-6 per step)
# is frozen. 0.9^6000 = 1e-275 still fits float64, so the tables hold for Adam's b1 >= 0.9.
EXACT_UNTIL = 6000
PIECES = ((1, 1), (2, 3), (4, 7), (8, 15), (16, 31), (32, None))  # missed steps j, first..last


def eps_free_factor(step: torch.Tensor, b1: float, b2: float) -> torch.Tensor:
    """sqrt(1 - b2^u) / (1 - b1^u): how Adam's bias correction scales m / sqrt(v) at step u."""
    return (1 - b2**step).sqrt() / (1 - b1**step)


def eps_bound_factor(step: torch.Tensor, b1: float, b2: float) -> torch.Tensor:
    """1 / (1 - b1^u): the bias correction of m / eps at step u (b2 unused: eps dominates)."""
    return 1 / (1 - b1**step)


Series = tuple[float, Callable[[torch.Tensor, float, float], torch.Tensor]]


def series(b1: float, b2: float) -> tuple[Series, Series]:
    """(ratio, factor) of the eps-free terms a_u and of the eps-bound terms b_u."""
    return (b1 / math.sqrt(b2), eps_free_factor), (b1, eps_bound_factor)


_SUFFIX: dict[tuple[float, float, float, str, str], torch.Tensor] = {}


def suffix_sums(ratio: float, factor, b1: float, b2: float, device: torch.device) -> torch.Tensor:
    """Q[s] = sum_{u=s..U} ratio^u factor(u) for s = 0..U+1 (Q[0] = Q[1], Q[U+1] = 0), float64."""
    key = (ratio, b1, b2, factor.__name__, str(device))
    if key not in _SUFFIX:
        u = torch.arange(1, EXACT_UNTIL + 1, dtype=torch.float64)
        q = (ratio**u * factor(u, b1, b2)).flip(0).cumsum(0).flip(0)
        _SUFFIX[key] = torch.cat([q[:1], q, q.new_zeros(1)]).to(device)
    return _SUFFIX[key]


def range_sum(
    last: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, term: Series, b1: float, b2: float
) -> torch.Tensor:
    """[n] float64: sum_{u=lo..hi} ratio^(u-last) factor(u) per row (0 where lo > hi; lo > last).

    A difference of suffix sums keeps full precision: both are of the size ratio^lo, never a
    small difference of two large sums.
    """
    ratio, factor = term
    q = suffix_sums(ratio, factor, b1, b2, last.device)
    cap = EXACT_UNTIL + 1
    start, stop = lo.clamp(max=cap), (hi + 1).clamp(max=cap)
    scale_back = ratio ** (-last.clamp(max=EXACT_UNTIL).to(torch.float64))  # <= 1e275 at 6000
    head = torch.where(start < stop, scale_back * (q[start] - q[stop.clamp(min=start)]), 0.0)
    first = lo.clamp(min=cap)  # the first step of the range above the table
    span_from = (first - last).to(torch.float64)
    span_to = (hi + 1 - last).to(torch.float64)
    tail = factor(first.to(torch.float64), b1, b2) * (ratio**span_from - ratio**span_to)
    return head + torch.where(first <= hi, tail / (1 - ratio), 0.0)


def drift_steps(
    last: torch.Tensor, upto: int, b1: float, b2: float, eps: float, v: torch.Tensor
) -> torch.Tensor:
    """[n, dim]: D with dense Adam's zero-gradient steps last+1..upto moving a row by lr * m * D
    (the module docstring); 0 for a row with nothing missed."""
    root_v = v.sqrt()
    total = torch.zeros_like(v)
    missed = upto - last
    most = int(missed.max()) if missed.numel() else 0
    eps_free, eps_bound = series(b1, b2)
    for first, final in PIECES:
        if first > most:
            break
        lo = last + first
        hi = last.new_full((), upto) if final is None else (last + final).clamp(max=upto)
        a = range_sum(last, lo, hi, eps_free, b1, b2)
        b = range_sum(last, lo, hi, eps_bound, b1, b2)
        pole = torch.where(a > 0, a / b.clamp_min(1e-300), 1.0).to(v.dtype).unsqueeze(1)
        # (a row never used has v = 0 and m = 0: the clamp keeps 0/0 away when eps is 0)
        total += a.to(v.dtype).unsqueeze(1) / (root_v + eps * pole).clamp_min(1e-30)
    return total
