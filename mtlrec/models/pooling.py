"""Pooling of padded multi-value embeddings [N, L, d] with a mask [N, L] into one vector [N, d].

Every mode is a batched tensor op over the whole batch (no per-sample Python):

    sum           sum_l m_l e_l
    mean          sum_l m_l e_l / max(1, sum_l m_l)          (an empty bag pools to 0)
    max           max_{l: m_l} e_l                           (an empty bag pools to 0)
    weighted_sum  sum_l m_l w_l e_l                          (w: per-value weights, e.g. Ali-CCP's)

Target attention (DIN: Zhou et al., "Deep Interest Network for Click-Through Rate Prediction",
KDD 2018): the candidate's embedding q attends over the behaviour sequence k_1..k_L with a small
activation unit, a(q, k) = MLP([q, k, q - k, q * k]) -> one score, and

    v = sum_l m_l a(q, k_l) k_l

The scores are used as they are, without a softmax, as in the paper (so the intensity of the
user's interest is kept).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

SIMPLE_POOLINGS = ("sum", "mean", "max", "weighted_sum")


def masked_pool(
    emb: torch.Tensor,
    mask: torch.Tensor,
    mode: str,
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Pool emb [N, L, d] over the positions where mask [N, L] is True -> [N, d]."""
    m = mask.to(emb.dtype).unsqueeze(-1)  # [N, L, 1]
    if mode == "sum":
        return (emb * m).sum(1)
    if mode == "mean":
        return (emb * m).sum(1) / m.sum(1).clamp_min(1.0)
    if mode == "weighted_sum":
        if weights is None:
            raise ValueError("weighted_sum pooling needs per-value weights")
        return (emb * (m * weights.to(emb.dtype).unsqueeze(-1))).sum(1)
    if mode == "max":
        filled = emb.masked_fill(~mask.unsqueeze(-1), float("-inf")).amax(1)
        # A row without any value has -inf everywhere: it pools to 0 like the other modes.
        return torch.where(mask.any(1, keepdim=True), filled, torch.zeros_like(filled))
    raise ValueError(f"unknown pooling '{mode}'; use one of {SIMPLE_POOLINGS}")


class TargetAttention(nn.Module):
    """DIN's activation unit over a sequence: forward(q [N, d], k [N, L, d], mask [N, L]) -> [N, d].

    `hidden`: the activation unit's hidden sizes (the paper uses a small MLP; () is one linear
    score layer). PReLU between layers, as in the paper's base activation.
    """

    def __init__(self, dim: int, hidden: Sequence[int] = (36,)):
        super().__init__()
        layers: list[nn.Module] = []
        in_dim = 4 * dim
        for h in hidden:
            layers += [nn.Linear(in_dim, h), nn.PReLU()]
            in_dim = h
        layers.append(nn.Linear(in_dim, 1))
        self.unit = nn.Sequential(*layers)

    def scores(self, q: torch.Tensor, k: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The masked attention scores [N, L] (0 at padded positions)."""
        qe = q.unsqueeze(1).expand_as(k)
        a = self.unit(torch.cat([qe, k, qe - k, qe * k], dim=-1)).squeeze(-1)
        return a * mask.to(a.dtype)

    def forward(self, q: torch.Tensor, k: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return (self.scores(q, k, mask).unsqueeze(-1) * k).sum(1)
