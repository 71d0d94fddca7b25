"""ESCM²-DR is not IPS on the CVR tower (issue: with ê detached in R_DR and e in R_IMP, the CVR
tower's gradient of DR equalled IPS's exactly), and its formulas, values and gradients, by hand."""

from __future__ import annotations

import math

import pytest
import torch

from models.test_zoo import SPEC, build, inputs
from mtlrec.models.escm2 import Escm2Config, counterfactual_risk


def _sig(z: float) -> float:
    return 1 / (1 + math.exp(-z))


def _bce(z: float, y: float) -> float:
    return -(y * math.log(_sig(z)) + (1 - y) * math.log(1 - _sig(z)))


Z = [0.5, -1.0, 2.0, 0.0]  # CVR logits
P = [0.5, 0.25, 0.2, 1.0]  # propensities
C = [1.0, 0.0, 1.0, 0.0]  # clicks: rows 1 and 3 unclicked
R = [1.0, 0.0, 0.0, 0.0]  # conversions
IMP = [0.3, 0.6, 0.9, 0.2]  # ê (imputation=error) or y~ (imputation=label)


def _risk(imputation: str):
    z = torch.tensor(Z, dtype=torch.float64, requires_grad=True)
    t = torch.tensor(IMP, dtype=torch.float64, requires_grad=True)
    as_t = [torch.tensor(v, dtype=torch.float64) for v in (P, C, R)]
    dr, imp = counterfactual_risk(z, as_t[0], as_t[1], as_t[2], t, imputation)
    assert imp is not None
    return z, t, dr, imp


def test_dr_error_mode_values_and_gradients_by_hand():
    """The reference code: R_DR and R_IMP, nothing detached."""
    z, t, dr, imp = _risk("error")
    e = [_bce(Z[i], R[i]) for i in range(4)]
    n = 4
    want_dr = sum(IMP[i] + C[i] * (e[i] - IMP[i]) / P[i] for i in range(n)) / n
    want_imp = sum(C[i] * (e[i] - IMP[i]) ** 2 / P[i] for i in range(n)) / n
    assert dr.item() == pytest.approx(want_dr, rel=1e-12)
    assert imp.item() == pytest.approx(want_imp, rel=1e-12)
    (dz,) = torch.autograd.grad(dr + imp, z, retain_graph=True)
    # d e_i / d z_i = sigmoid(z_i) - r_i
    want = [(C[i] / P[i]) * (1 + 2 * (e[i] - IMP[i])) * (_sig(Z[i]) - R[i]) / n for i in range(n)]
    torch.testing.assert_close(dz, torch.tensor(want, dtype=torch.float64))
    (dt,) = torch.autograd.grad(dr + imp, t)  # R_DR trains the imputation tower too
    want_t = [(1 - C[i] / P[i] - 2 * C[i] * (e[i] - IMP[i]) / P[i]) / n for i in range(n)]
    torch.testing.assert_close(dt, torch.tensor(want_t, dtype=torch.float64))


def test_dr_label_mode_values_and_gradients_by_hand():
    """DR-JL: ê_i = BCE(pCVR_i, y~_i); y~ fixed in R_DR, pCVR fixed in R_IMP."""
    z, t, dr, imp = _risk("label")
    n = 4
    e = [_bce(Z[i], R[i]) for i in range(n)]
    eh = [_bce(Z[i], IMP[i]) for i in range(n)]
    assert dr.item() == pytest.approx(
        sum(eh[i] + C[i] * (e[i] - eh[i]) / P[i] for i in range(n)) / n, rel=1e-12
    )
    assert imp.item() == pytest.approx(
        sum(C[i] * (e[i] - eh[i]) ** 2 / P[i] for i in range(n)) / n, rel=1e-12
    )
    (dz_dr,) = torch.autograd.grad(dr, z, retain_graph=True)
    want = [
        ((1 - C[i] / P[i]) * (_sig(Z[i]) - IMP[i]) + C[i] / P[i] * (_sig(Z[i]) - R[i])) / n
        for i in range(n)
    ]
    torch.testing.assert_close(dz_dr, torch.tensor(want, dtype=torch.float64))
    assert dz_dr[1] != 0 and dz_dr[3] != 0  # unclicked rows train the CVR tower (IPS: 0)
    dz_imp, dt_imp = torch.autograd.grad(imp, (z, t), retain_graph=True, allow_unused=True)
    assert dz_imp is None or bool((dz_imp == 0).all())  # R_IMP trains only the imputation
    # d ê_i / d y~_i = -z_i (BCE with logits in its soft label); d R_IMP / d y~_i by hand
    want_t = [2 * C[i] * (e[i] - eh[i]) / P[i] * Z[i] / n for i in range(n)]
    torch.testing.assert_close(dt_imp, torch.tensor(want_t, dtype=torch.float64))
    (dt_dr,) = torch.autograd.grad(dr, t, allow_unused=True)
    assert dt_dr is None  # y~ is a constant in R_DR


@pytest.mark.parametrize("imputation", ["error", "label"])
def test_the_cvr_tower_gradient_of_dr_differs_from_ips(imputation):
    """On a batch with clicked and unclicked rows, the CVR tower's gradient of extra_loss."""
    labels = torch.tensor([[1.0, 1.0], [0.0, 0.0], [1.0, 0.0], [0.0, 0.0], [0.0, 0.0], [1.0, 0.0]])
    grads = {}
    for regularizer in ("ips", "dr"):
        extra = {} if imputation == "error" else {"imputation": imputation}  # error: default
        model, _ = build(name="escm2", regularizer=regularizer, **extra)
        model.extra_loss(model(*inputs(6)), labels).backward()
        grads[regularizer] = [p.grad.clone() for p in model.towers["cvr"].parameters()]
    assert all(g.abs().sum() > 0 for g in grads["dr"])
    diff = max((a - b).abs().max().item() for a, b in zip(grads["dr"], grads["ips"], strict=True))
    assert diff > 1e-6  # the old DR (ê and e detached): exactly 0.0 here


def test_the_imputed_error_is_a_probability_by_default_and_softplus_on_request():
    cfg = Escm2Config()
    assert (cfg.counterfactual_weight, cfg.ctcvr_weight, cfg.ctr_weight) == (0.5, 0.5, 1.0)
    assert (cfg.imputation, cfg.imputed_error, cfg.propensity_clip) == (
        "error",
        "probability",
        0.05,
    )
    model, _ = build(name="escm2", regularizer="dr")
    soft, _ = build(name="escm2", regularizer="dr", imputed_error="softplus")
    with torch.no_grad():  # a large tower output: a probability stays below 1, softplus does not
        for m in (model, soft):
            m.imputation[-1].bias.fill_(5.0)
        p, s = model(*inputs())["cvr_imputed"], soft(*inputs())["cvr_imputed"]
    assert bool((p < 1).all()) and bool((s > 1).all())
    torch.testing.assert_close(s, torch.nn.functional.softplus(torch.logit(p.double())).float())


def test_escm2_config_names_the_bad_imputation():
    from mtlrec.errors import MtlrecError

    with pytest.raises(MtlrecError) as err:
        build(name="escm2", imputation="guess")
    assert str(err.value) == "model.imputation 'guess' is unknown; use one of ['error', 'label']"
    assert SPEC.funnel is not None
