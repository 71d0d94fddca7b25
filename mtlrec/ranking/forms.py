"""The fusion forms: one ranking score from a row's task probabilities p_1..p_T.

    product     prod_t p_t^{w_t}, computed as exp(sum_t w_t log p_t)
    sum         sum_t w_t p_t
    logit_sum   sum_t w_t logit(p_t)   (a log-odds score, not a probability)

Probabilities are clipped to [EPS, 1 - EPS] before a log or a logit, so a score is finite for
any model output. All three are invariant to scaling every weight by the same positive number
(product up to a monotone transform), so only the weights' ratios matter for the ranking.
The same module scores predict's rows and runs inside an exported model.
"""

from __future__ import annotations

from typing import cast

import torch
from torch import nn

FORMS = ("product", "sum", "logit_sum")
EPS = 1e-7


class FusionHead(nn.Module):
    """probabilities [B, T] (columns in the order of `tasks`) -> fused score [B]."""

    def __init__(self, form: str, weights: list[float]):
        super().__init__()
        if form not in FORMS:
            raise ValueError(f"unknown fusion form {form!r}; use one of {FORMS}")
        self.form = form
        self.register_buffer("weights", torch.tensor(weights, dtype=torch.float64))

    def forward(self, probs: torch.Tensor) -> torch.Tensor:
        w = cast(torch.Tensor, self.weights).to(probs.dtype)
        if self.form == "sum":
            return probs @ w
        p = probs.clamp(EPS, 1 - EPS)
        if self.form == "product":
            return torch.exp(torch.log(p) @ w)
        return (torch.log(p) - torch.log1p(-p)) @ w


def fuse(form: str, probs: torch.Tensor, weights: list[float]) -> torch.Tensor:
    """The fused score of every row of `probs` [N, T] (float64 keeps the search exact)."""
    with torch.no_grad():
        return FusionHead(form, weights)(probs.double())
