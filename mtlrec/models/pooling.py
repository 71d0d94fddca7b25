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
from typing import cast

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

    How it is computed (the same function, measured 3-4x faster on CPU; docs/performance.md): the
    first layer W = [W_q | W_k | W_d | W_p] of the unit applied to [q, k, q - k, q * k] is

        (W_q + W_d) q + b   +   [W_k - W_d | W_p] [k, q * k],

    so the q part is computed once per row instead of once per position, the per-position input
    is 2d wide instead of 4d and the concatenation of four [N, L, d] tensors is never built. On
    CPU only the unpadded positions go through the unit (gathered, then summed back with
    index_add); on other devices every position does and the padded scores are masked, so a
    batch never waits for the host to count its positions.
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

    def _first_layer(self, dim: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(per-row weight [h, d], per-position weight [h, 2d], bias [h]) of the unit's first
        layer, split as the class docstring says."""
        first = cast(nn.Linear, self.unit[0])
        w_q, w_k, w_diff, w_prod = first.weight.split(dim, dim=1)
        return w_q + w_diff, torch.cat([w_k - w_diff, w_prod], 1), first.bias

    def _unit_scores(
        self, q: torch.Tensor, k: torch.Tensor, row_term: torch.Tensor
    ) -> torch.Tensor:
        """a(q, k) for matching rows q [..., d], k [..., d] whose per-row part is `row_term`."""
        _, per_position, _ = self._first_layer(k.shape[-1])
        x = torch.cat([k, q * k], dim=-1) @ per_position.t() + row_term
        return self.unit[1:](x).squeeze(-1)

    def _row_term(self, q: torch.Tensor) -> torch.Tensor:
        per_row, _, bias = self._first_layer(q.shape[-1])
        return torch.addmm(bias, q, per_row.t())  # [N, h]

    def scores(self, q: torch.Tensor, k: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The masked attention scores [N, L] (0 at padded positions)."""
        a = self._unit_scores(q.unsqueeze(1), k, self._row_term(q).unsqueeze(1))
        return a * mask.to(a.dtype)

    def forward(self, q: torch.Tensor, k: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if k.device.type != "cpu":
            return (self.scores(q, k, mask).unsqueeze(-1) * k).sum(1)
        rows, cols = mask.nonzero(as_tuple=True)  # the unpadded positions
        k_used = k[rows, cols]  # [n, d]
        a = self._unit_scores(
            q.index_select(0, rows), k_used, self._row_term(q).index_select(0, rows)
        )
        weighted = (a.unsqueeze(-1) * k_used).to(k.dtype)
        return k.new_zeros(q.shape[0], k.shape[-1]).index_add(0, rows, weighted)
