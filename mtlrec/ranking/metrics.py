"""Ranking metrics of a score against a graded utility (e.g. click=1, conversion=10 -> 0, 1, 11).

`utility_auc` generalises ROC AUC to graded labels: over the row pairs with u_i > u_j, the
share of the utility gaps (u_i - u_j) whose pair the score orders the same way (ties in score
count one half). With a 0/1 utility it is the ROC AUC; its expectation is highest when rows are
ranked by their expected utility, so the utility's weights matter, not only their order.
`utility_gauc` is its impression-weighted mean over groups (e.g. users), groups
with a single utility level skipped, as GAUC does with one-class groups. `ndcg_at_k` is the mean
over groups of DCG@k / ideal DCG@k with linear gain (the utility) and discount 1/log2(1 + rank);
groups whose utility is all zero are skipped. Vectorized: sorts, never a loop over groups.
"""

from __future__ import annotations

import math

import numpy as np


def _pair_counts(u: np.ndarray, s: np.ndarray, g: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per group (ids 0..G-1): (sum over row pairs with u_i > u_j of (u_i - u_j) x [s_i > s_j],
    ties 1/2; sum of u_i - u_j over those pairs). A pair's utility gap is the sum of the gaps
    between consecutive utility levels it spans, so both sums are, per level b, the gap below b
    times a Mann-Whitney count of the rows at or above b against the rows below it."""
    n_groups = int(g.max()) + 1 if g.size else 0
    order = np.lexsort((s, g))
    gg, ss, uu = g[order], s[order], u[order]
    n = len(gg)
    new_group = np.r_[True, gg[1:] != gg[:-1]]
    position = np.arange(n) - np.flatnonzero(new_group)[np.cumsum(new_group) - 1]
    new_run = new_group | np.r_[True, ss[1:] != ss[:-1]]  # a run of tied scores in one group
    run_id = np.cumsum(new_run) - 1
    starts = np.flatnonzero(new_run)
    ends = np.r_[starts[1:], n] - 1
    rank = ((position[starts] + position[ends]) / 2 + 1)[run_id]  # 1-based, ties averaged
    size = np.bincount(gg, minlength=n_groups).astype(np.float64)
    concordant = np.zeros(n_groups)
    pairs = np.zeros(n_groups)
    levels = np.unique(u)
    for below, level in zip(levels[:-1], levels[1:], strict=True):
        pos = (uu >= level).astype(np.float64)
        n_pos = np.bincount(gg, weights=pos, minlength=n_groups)
        rank_sum = np.bincount(gg, weights=rank * pos, minlength=n_groups)
        gap = float(level - below)
        concordant += gap * (rank_sum - n_pos * (n_pos + 1) / 2)
        pairs += gap * n_pos * (size - n_pos)
    return concordant, pairs


def _group_ids(groups: np.ndarray | None, n: int) -> np.ndarray:
    if groups is None:
        return np.zeros(n, dtype=np.int64)
    return np.unique(groups, return_inverse=True)[1].reshape(-1).astype(np.int64)


def utility_auc(utility: np.ndarray, score: np.ndarray) -> float:
    """Utility-gap-weighted share of row pairs the score orders right (NaN: one utility level)."""
    concordant, pairs = _pair_counts(utility, score, _group_ids(None, len(utility)))
    total = pairs.sum()
    return float(concordant.sum() / total) if total > 0 else math.nan


def utility_gauc(utility: np.ndarray, score: np.ndarray, groups: np.ndarray) -> float:
    """Impression-weighted mean of the per-group utility AUC (one-level groups skipped)."""
    g = _group_ids(groups, len(utility))
    concordant, pairs = _pair_counts(utility, score, g)
    size = np.bincount(g, minlength=len(pairs)).astype(np.float64)
    valid = pairs > 0
    if not valid.any():
        return math.nan
    per_group = concordant[valid] / pairs[valid]
    return float((per_group * size[valid]).sum() / size[valid].sum())


def _dcg(gain: np.ndarray, order_key: np.ndarray, g: np.ndarray, k: int, n_groups: int):
    order = np.lexsort((-order_key, g))  # within each group, best first; stable on ties
    gg, gain = g[order], gain[order]
    new_group = np.r_[True, gg[1:] != gg[:-1]]
    position = np.arange(len(gg)) - np.flatnonzero(new_group)[np.cumsum(new_group) - 1]
    top = position < k
    discount = 1.0 / np.log2(position[top] + 2.0)
    return np.bincount(gg[top], weights=gain[top] * discount, minlength=n_groups)


def ndcg_at_k(utility: np.ndarray, score: np.ndarray, groups: np.ndarray | None, k: int) -> float:
    """Mean NDCG@k over the groups holding some utility (linear gain); one group if none given."""
    g = _group_ids(groups, len(utility))
    n_groups = int(g.max()) + 1 if g.size else 0
    gain = utility.astype(np.float64)
    ideal = _dcg(gain, gain, g, k, n_groups)
    valid = ideal > 0
    if not valid.any():
        return math.nan
    got = _dcg(gain, score.astype(np.float64), g, k, n_groups)
    return float(np.mean(got[valid] / ideal[valid]))
