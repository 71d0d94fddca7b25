"""ESMM's product in log space: values and gradients against a 50-digit reference, chains included."""

from __future__ import annotations

import itertools

import mpmath
import pytest
import torch
import torch.nn.functional as F

from mtlrec.models.esmm import product_logit as reexported
from mtlrec.models.logspace import log1mexp, product_logit

mpmath.mp.dps = 50
GRID = [-100.0, -60.0, -30.0, -20.0, -5.0, -1.0, -0.3, 0.0, 0.3, 1.0, 5.0, 20.0, 30.0, 60.0, 100.0]


def sig(x):
    return 1 / (1 + mpmath.exp(-x))


def chain_reference(logits: tuple[float, ...], label: float):
    """(logit of prod sigmoid(x_i), BCE loss, d loss / d x_i) at 50 digits."""
    x = [mpmath.mpf(v) for v in logits]
    p = mpmath.fprod(sig(v) for v in x)
    logit = mpmath.log(p) - mpmath.log(1 - p)
    loss = -(label * mpmath.log(p) + (1 - label) * mpmath.log(1 - p))
    # d logit / d x_i = sigmoid(-x_i) / (1 - p);  d loss / d logit = sigmoid(logit) - label = p - label
    grads = [(p - label) * sig(-v) / (1 - p) for v in x]
    return float(logit), float(loss), [float(g) for g in grads]


def check(cases: list[tuple[float, ...]]):
    for label in (0.0, 1.0):
        x = torch.tensor(cases, dtype=torch.float32, requires_grad=True)
        logit = x[:, 0]
        for k in range(1, x.shape[1]):
            logit = product_logit(logit, x[:, k])  # the chain applies the helper step by step
        target = torch.full_like(logit, label)
        loss = F.binary_cross_entropy_with_logits(logit, target, reduction="none")
        loss.sum().backward()
        assert torch.isfinite(logit).all() and torch.isfinite(loss).all()
        assert torch.isfinite(x.grad).all()
        ref = [chain_reference(c, label) for c in cases]
        want_logit = torch.tensor([r[0] for r in ref], dtype=torch.float64)
        want_loss = torch.tensor([r[1] for r in ref], dtype=torch.float64)
        want_grad = torch.tensor([r[2] for r in ref], dtype=torch.float64)
        torch.testing.assert_close(logit.double(), want_logit, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(loss.double(), want_loss, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(x.grad.double(), want_grad, rtol=1e-4, atol=1e-6)


def test_esmm_product_matches_the_reference_on_a_grid_from_minus_100_to_100():
    check(list(itertools.product(GRID, GRID)))


def test_confident_steps_are_neither_nan_nor_saturated():
    # the defects of the clamped formula: (20, 20) gave NaN gradients, (30, 30) a flat 27.63
    x = torch.tensor([[20.0, 20.0], [30.0, 30.0]], requires_grad=True)
    logit = product_logit(x[:, 0], x[:, 1])
    logit.sum().backward()
    assert abs(logit[1].item() - (30 - 0.6931471805599453)) < 1e-4  # p = 1 - 2 e^-30
    torch.testing.assert_close(x.grad, torch.full((2, 2), 0.5), rtol=1e-6, atol=1e-6)


def test_chains_of_three_steps_match_the_reference():
    check(list(itertools.product([-100.0, -20.0, 0.0, 3.0, 30.0, 100.0], repeat=3)))


def test_log1mexp_both_branches_finite_and_exact_with_finite_gradients():
    xs = [-200.0, -50.0, -5.0, -1.0, -0.7, -0.69, -0.5, -1e-3, -1e-7, -1e-20]
    x = torch.tensor(xs, dtype=torch.float64, requires_grad=True)
    y = log1mexp(x)
    y.sum().backward()
    want = [float(mpmath.log1p(-mpmath.exp(v))) for v in xs]
    # d/dx log(1 - e^x) = -e^x / (1 - e^x)
    want_grad = [float(mpmath.exp(v) / mpmath.expm1(v)) for v in xs]
    torch.testing.assert_close(y, torch.tensor(want, dtype=torch.float64), rtol=1e-12, atol=0)
    torch.testing.assert_close(
        x.grad, torch.tensor(want_grad, dtype=torch.float64), rtol=1e-9, atol=1e-300
    )
    # at 0 the value is the true -inf (no clamp); just below it, and far below, the gradients of
    # both rows stay finite although each row's other branch was evaluated too
    assert log1mexp(torch.tensor([0.0])).item() == float("-inf")
    z = torch.tensor([-1e-30, -100.0], requires_grad=True)
    log1mexp(z).sum().backward()
    assert torch.isfinite(z.grad).all() and z.grad[1].item() < 0


def test_old_import_path_still_works():
    assert reexported is product_logit


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_product_logit_is_symmetric(dtype):
    a = torch.linspace(-100, 100, 41, dtype=dtype)
    torch.testing.assert_close(product_logit(a, a.flip(0)), product_logit(a.flip(0), a))
