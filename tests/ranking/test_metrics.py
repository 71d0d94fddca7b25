"""The ranking metrics against brute force on small random data (ties included)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from sklearn.metrics import ndcg_score, roc_auc_score

from mtlrec.ranking.forms import FusionHead
from mtlrec.ranking.metrics import ndcg_at_k, utility_auc, utility_gauc


def brute_utility_auc(u, s):
    num = den = 0.0
    for i, j in itertools.permutations(range(len(u)), 2):
        if u[i] > u[j]:
            gap = u[i] - u[j]
            num += gap * (1.0 if s[i] > s[j] else 0.5 if s[i] == s[j] else 0.0)
            den += gap
    return num / den if den else math.nan


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_utility_auc_is_the_gap_weighted_pair_share(seed):
    rng = np.random.default_rng(seed)
    u = rng.choice([0.0, 1.0, 10.0, 11.0], size=40)
    s = np.round(rng.random(40), 1)  # ties on purpose
    assert utility_auc(u, s) == pytest.approx(brute_utility_auc(u, s), abs=1e-12)


def test_utility_auc_of_a_binary_utility_is_roc_auc():
    rng = np.random.default_rng(3)
    y = (rng.random(200) < 0.3).astype(float)
    s = rng.random(200)
    assert utility_auc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert math.isnan(utility_auc(np.ones(5), s[:5]))


def test_utility_gauc_is_the_size_weighted_mean_over_groups_with_two_levels():
    rng = np.random.default_rng(4)
    u = rng.choice([0.0, 1.0, 5.0], size=90)
    s = rng.random(90)
    g = rng.integers(0, 6, size=90)
    u[g == 5] = 1.0  # a one-level group: skipped
    per = [(brute_utility_auc(u[g == k], s[g == k]), (g == k).sum()) for k in range(5)]
    expected = sum(a * n for a, n in per) / sum(n for _, n in per)
    assert utility_gauc(u, s, g) == pytest.approx(expected, abs=1e-12)


def test_ndcg_at_k_matches_scikit_learn_per_group():
    rng = np.random.default_rng(5)
    u = rng.choice([0.0, 1.0, 11.0], size=60)
    s = rng.random(60)
    g = np.repeat(np.arange(4), 15)
    expected = np.mean([ndcg_score([u[g == k]], [s[g == k]], k=5) for k in range(4)])
    assert ndcg_at_k(u, s, g, 5) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("form", ["product", "sum", "logit_sum"])
def test_fusion_forms_are_their_formulas(form):
    p = np.array([[0.2, 0.5], [0.9, 1e-9], [0.4, 0.7]])
    w = [0.3, 1.7]
    got = FusionHead(form, w)(torch.from_numpy(p)).numpy()
    q = np.clip(p, 1e-7, 1 - 1e-7)
    expected = {
        "product": np.prod(q ** np.array(w), axis=1),
        "sum": p @ np.array(w),
        "logit_sum": np.log(q / (1 - q)) @ np.array(w),
    }[form]
    np.testing.assert_allclose(got, expected, rtol=1e-12)
