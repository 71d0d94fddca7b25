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
from torch.autograd.function import once_differentiable

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


class _PReLUScore(torch.autograd.Function):
    """The unit's last two layers, s = PReLU_a(x) w + b for x [n, h] -> [n], with a hand-written
    backward: autograd's PReLU backward reduces the slope's gradient over a broadcast [n, h]
    tensor and measured several times slower than this whole backward (docs/performance.md)."""

    @staticmethod
    def forward(ctx, x, slope, weight, bias):  # type: ignore[override]
        y = torch.prelu(x, slope.to(x.dtype))
        ctx.save_for_backward(x, y, slope, weight)
        return y.mv(weight.view(-1).to(x.dtype)) + bias.to(x.dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):  # type: ignore[override]
        x, y, slope, weight = ctx.saved_tensors
        w = weight.view(-1).to(x.dtype)
        grad_y = grad.unsqueeze(1) * w  # [n, h]
        # On CPU (the only caller) .item() costs no device sync.
        grad_x = torch.ops.aten.leaky_relu_backward(grad_y, x, slope.item(), False)
        # d/da PReLU_a(x) = min(x, 0): the slope's gradient is grad . (min(x, 0) w)
        grad_slope = grad.dot(x.clamp_max(0).mv(w)).reshape(slope.shape).to(slope.dtype)
        grad_weight = y.t().mv(grad).view_as(weight).to(weight.dtype)
        return grad_x, grad_slope, grad_weight, grad.sum().reshape(1).to(weight.dtype)


class TargetAttention(nn.Module):
    """DIN's activation unit over a sequence: forward(q [N, d], k [N, L, d], mask [N, L]) -> [N, d].

    `hidden`: the activation unit's hidden sizes (the paper uses a small MLP; () is one linear
    score layer). PReLU between layers, as in the paper's base activation.

    How it is computed (the same function, faster; measurements in docs/performance.md,
    "Target attention"): the first layer W = [W_q | W_k | W_d | W_p] of the unit applied to
    [q, k, q - k, q * k] is

        (W_q + W_d) q + b   +   [W_k - W_d | W_p] [k, q * k],

    so the q part is computed once per row instead of once per position, the per-position input
    is 2d wide instead of 4d and the concatenation of four [N, L, d] tensors is never built. On
    CPU only the unpadded positions go through the unit (`pool_positions`: gathered, then summed
    back with index_add; FieldEmbedding looks up only those positions' rows), and the last PReLU
    and score layer have a hand-written backward (_PReLUScore); on other devices every position
    does and the padded scores are masked, so a batch never waits for the host to count its
    positions.
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
        return self.pool_positions(q, k[rows, cols], rows)

    def pool_positions(
        self, q: torch.Tensor, k_used: torch.Tensor, rows: torch.Tensor
    ) -> torch.Tensor:
        """forward() given only the unpadded positions: k_used [n, d] with rows [n] (ascending)
        the row of q [N, d] each belongs to -> [N, d]."""
        per_row, per_position, bias = self._first_layer(q.shape[-1])
        row_term = torch.addmm(bias, q, per_row.t()).index_select(0, rows)
        q_used = q.index_select(0, rows)
        x = torch.addmm(row_term, torch.cat([k_used, q_used * k_used], 1), per_position.t())
        a = self._positions_scores(x)
        weighted = (a.unsqueeze(-1) * k_used).to(k_used.dtype)
        return k_used.new_zeros(q.shape[0], k_used.shape[-1]).index_add(0, rows, weighted)

    def _positions_scores(self, x: torch.Tensor) -> torch.Tensor:
        """The rest of the unit on its first layer's output x [n, h] -> scores [n]."""
        if len(self.unit) == 1:  # hidden=(): the first layer is the score
            return x.squeeze(-1)
        prelu, last = cast(nn.PReLU, self.unit[-2]), cast(nn.Linear, self.unit[-1])
        x = self.unit[1:-2](x)
        hand_written = (
            prelu.weight.numel() == 1  # built by this class (one slope)
            and torch.is_grad_enabled()
            and x.requires_grad  # training: the backward is what it is for
            and not torch.jit.is_tracing()  # an export records the layers as they are
            and not torch.compiler.is_compiling()
        )
        if not hand_written:
            return last(prelu(x)).squeeze(-1)
        return cast(torch.Tensor, _PReLUScore.apply(x, prelu.weight, last.weight, last.bias))
