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

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
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


@dataclass(frozen=True)
class PositionSegments:
    """Which positions sum into which row: the sparse [rows, positions] matrix's CSR row pointers
    and column indices; `in_row_order` when the positions come row by row (col is 0..n-1)."""

    crow: torch.Tensor
    col: torch.Tensor
    in_row_order: bool

    @classmethod
    def of(cls, rows: torch.Tensor, num_rows: int) -> PositionSegments:
        """From rows [n], the row of each position. Positions keep their order within a row
        (stable), so the sums are deterministic."""
        counts = torch.bincount(rows, minlength=num_rows)
        crow = rows.new_zeros(num_rows + 1)
        torch.cumsum(counts, 0, out=crow[1:])
        if bool((rows[1:] >= rows[:-1]).all()):  # FieldEmbedding's positions with copies=1
            return cls(crow, torch.arange(rows.numel(), device=rows.device), True)
        return cls(crow, torch.argsort(rows, stable=True), False)

    def matrix(self, values: torch.Tensor) -> torch.Tensor:
        """The sparse [rows, n] matrix with values [n] at the positions' places: its product with
        [n, m] sums each row's positions, several times faster than index_add on CPU."""
        ordered = values if self.in_row_order else values.index_select(0, self.col)
        size = (self.crow.numel() - 1, values.numel())
        with warnings.catch_warnings():  # "sparse CSR support is in beta": about the format
            warnings.simplefilter("ignore")
            return torch.sparse_csr_tensor(
                self.crow, self.col, ordered, size, check_invariants=False
            )


class _AttendPositions(torch.autograd.Function):
    """Target attention over the unpadded positions with the unit [Linear, PReLU, Linear], forward
    and backward written out (TargetAttention.pool_positions says when it is used).

    Inputs: q [N, d]; k [n, d], position i belonging to row rows[i], grouped by `segments`;
    the first layer split as TargetAttention's docstring says (per_row [h, d], per_position
    [h, 2d], bias [h]); the PReLU's one slope; the score layer's weight [1, h] and bias [1].
    Against autograd over the same ops it builds no [q * k] concatenation, sums positions into
    rows with a sparse matrix product instead of index_add, and its backward makes one [n, h]
    temporary where autograd's PReLU and Linear backwards make several. Saved tensors are never
    written to (a retained graph's second backward is the same).
    """

    @staticmethod
    def forward(ctx, q, k, rows, segments, per_row, per_position, bias, slope, weight, score_bias):  # type: ignore[override]
        n, d = k.shape
        q_used = q.index_select(0, rows)
        inputs = k.new_empty(n, 2 * d)  # [k, q * k], written in place
        inputs[:, :d] = k
        torch.mul(q_used, k, out=inputs[:, d:])
        x = torch.addmm(bias, q, per_row.t()).index_select(0, rows)  # the per-row term
        x.addmm_(inputs, per_position.t())
        y = torch.prelu(x, slope)
        scores = torch.addmv(score_bias, y, weight.view(-1))
        ctx.segments = segments
        ctx.save_for_backward(
            q, k, rows, per_row, per_position, slope, weight, q_used, inputs, x, y, scores
        )
        return segments.matrix(scores) @ k

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):  # type: ignore[override]
        q, k, rows, per_row, per_position, slope, weight, q_used, inputs, x, y, scores = (
            ctx.saved_tensors
        )
        d = q.shape[1]
        w = weight.view(-1)
        grad_weighted = grad.index_select(0, rows)  # d pooled / d (score_i k_i)
        grad_scores = (grad_weighted * k).sum(1)
        # d/dx of the score layer after PReLU_a: grad_scores * w * (1 if x > 0 else a); the
        # buffer first holds min(x, 0) = d PReLU_a(x) / da for the slope's gradient
        grad_x = torch.clamp_max(x, 0, out=torch.empty_like(x))
        grad_slope = grad_scores.dot(grad_x.mv(w)).reshape(slope.shape)
        # On CPU (the only caller) .item() costs no device sync.
        torch.ops.aten.leaky_relu_backward(
            grad_scores.unsqueeze(1), x, slope.item(), False, grad_input=grad_x
        )
        grad_x.mul_(w)
        sum_rows = ctx.segments.matrix(torch.ones_like(grad_scores))
        grad_row_term = sum_rows @ grad_x  # [N, h]
        grad_inputs = grad_x.mm(per_position)  # [n, 2d]: d/dk, d/d(q * k)
        grad_product = grad_inputs[:, d:]
        grad_q = torch.addmm(sum_rows @ (grad_product * k), grad_row_term, per_row)
        grad_k = torch.addcmul(grad_inputs[:, :d], grad_product, q_used)
        grad_k.addcmul_(grad_weighted, scores.unsqueeze(1))
        return (
            grad_q,
            grad_k,
            None,
            None,
            grad_row_term.t().mm(q),
            grad_x.t().mm(inputs),
            grad_row_term.sum(0),
            grad_slope,
            y.t().mv(grad_scores).view_as(weight),
            grad_scores.sum().reshape(1),
        )


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
    CPU only the unpadded positions go through the unit (`pool_positions`; FieldEmbedding looks
    up only those positions' rows), and for the unit FieldEmbedding builds (one hidden layer)
    forward and backward are written out (_AttendPositions: no concatenation, sparse row sums,
    few [n, h] temporaries); on other devices every position does and the padded scores are
    masked, so a batch never waits for the host to count its positions.
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
        """forward() given only the unpadded positions: k_used [n, d] with rows [n] the row of
        q [N, d] each belongs to -> [N, d]."""
        if not self._written_out(k_used):
            return self._pool_positions_by_layers(q, k_used, rows)
        per_row, per_position, bias = self._first_layer(q.shape[-1])
        prelu, last = cast(nn.PReLU, self.unit[1]), cast(nn.Linear, self.unit[2])
        segments = PositionSegments.of(rows, q.shape[0])
        pooled = _AttendPositions.apply(
            q, k_used, rows, segments, per_row, per_position, bias,
            prelu.weight, last.weight, last.bias,
        )  # fmt: skip
        return cast(torch.Tensor, pooled)

    def _written_out(self, k: torch.Tensor) -> bool:
        """Whether _AttendPositions computes pool_positions: the unit FieldEmbedding builds (one
        hidden layer, one PReLU slope), on CPU, in the parameters' dtype, and not while an export
        or the compiler records the layers as they are (checked first: an export must not reach
        the data-dependent count of positions)."""
        if torch.jit.is_tracing() or torch.compiler.is_compiling() or torch.compiler.is_exporting():
            return False
        return (
            len(self.unit) == 3
            and cast(nn.PReLU, self.unit[1]).weight.numel() == 1
            and k.device.type == "cpu"
            and k.dtype == cast(nn.Linear, self.unit[0]).weight.dtype
            and not torch.is_autocast_enabled("cpu")  # bf16 keeps autocast's own casts
            and k.shape[0] > 0  # a batch without any position: nothing to write out
        )

    def _pool_positions_by_layers(
        self, q: torch.Tensor, k_used: torch.Tensor, rows: torch.Tensor
    ) -> torch.Tensor:
        """pool_positions with the unit's layers as they are (autograd's backward)."""
        per_row, per_position, bias = self._first_layer(q.shape[-1])
        row_term = torch.addmm(bias, q, per_row.t()).index_select(0, rows)
        q_used = q.index_select(0, rows)
        x = torch.addmm(row_term, torch.cat([k_used, q_used * k_used], 1), per_position.t())
        a = self.unit[1:](x).squeeze(-1)
        weighted = (a.unsqueeze(-1) * k_used).to(k_used.dtype)
        return k_used.new_zeros(q.shape[0], k_used.shape[-1]).index_add(0, rows, weighted)
