"""MetaBalance, RLW, CAGrad, Nash-MTL, Aligned-MTL and FAMO against hand computations, and each
one's exact resume through a real (tiny) training run."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
import torch
from torch import nn

from conftest import TINY, compose_train
from helpers.stops import stop_then_resume
from mtlrec.data.spec import TaskSpec
from mtlrec.errors import MtlrecError
from mtlrec.training.balance import make_balancer
from mtlrec.training.balance.aligned_mtl import alignment_matrix
from mtlrec.training.balance.cagrad import cagrad_dual
from mtlrec.training.balance.nash_mtl import RIDGE, bargaining_solution

TWO = (TaskSpec("a", "la"), TaskSpec("b", "lb"))
NEW = ["aligned_mtl", "cagrad", "famo", "metabalance", "nash_mtl", "rlw"]


class Toy(nn.Module):
    """theta is shared by both losses, heads[k] belongs to task k only."""

    def __init__(self):
        super().__init__()
        self.theta = nn.Parameter(torch.zeros(2))
        self.heads = nn.Parameter(torch.zeros(2))

    def losses(self, g1, g2):
        # grad_theta L_k = g_k exactly; grad_heads L_k = 3 e_k
        return torch.stack(
            [
                torch.dot(torch.tensor(g1), self.theta) + 3 * self.heads[0],
                torch.dot(torch.tensor(g2), self.theta) + 3 * self.heads[1],
            ]
        )


def _step(name: str, g1, g2, **options) -> tuple[torch.Tensor, torch.Tensor]:
    model = Toy()
    balancer = make_balancer({"name": name, **options}, TWO, model)
    balancer.backward(model.losses(g1, g2), model)
    return model.theta.grad, model.heads.grad


def test_cagrad_on_two_orthogonal_gradients():
    # g1 = (1, 1), g2 = (1, -1): g0 = (1, 0); g_w = (1, 2p - 1) is shortest at w* = (1/2, 1/2),
    # g_w* = g0, lambda = c ||g0|| / ||g_w*|| = c = 0.5; d = (g0 + 0.5 g0) / (1 + 0.25) = (1.2, 0)
    theta, heads = _step("cagrad", [1.0, 1.0], [1.0, -1.0], c=0.5)
    assert torch.allclose(theta, torch.tensor([1.2, 0.0]), atol=1e-6)
    assert heads.tolist() == [3.0, 3.0]  # task-specific: the plain sum
    theta, _ = _step("cagrad", [1.0, 1.0], [1.0, -1.0], c=0.5, rescale=False)
    assert torch.allclose(theta, torch.tensor([1.5, 0.0]), atol=1e-6)
    theta, _ = _step("cagrad", [1.0, 0.5], [-1.0, 1.0], c=0.0)  # c = 0: the mean gradient
    assert torch.allclose(theta, torch.tensor([0.0, 0.75]), atol=1e-7)


def test_cagrad_dual_is_the_minimum_and_the_update_lies_on_the_ball():
    g = torch.tensor([[1.0, 0.5], [-1.0, 1.0]], dtype=torch.float64)
    gram, c = g @ g.T, 0.4
    w = cagrad_dual(gram, c)
    g0 = g.mean(0)
    # brute force over the simplex (w = (p, 1 - p)) on a fine grid
    p = torch.linspace(0, 1, 100001, dtype=torch.float64)
    gw = p[:, None] * g[0] + (1 - p)[:, None] * g[1]
    objective = gw @ g0 + c * g0.norm() * gw.norm(dim=1)
    best = int(objective.argmin())
    assert abs(float(w[0]) - float(p[best])) < 1e-4 and 0 < float(w[0]) < 1
    gw_star = w @ g
    assert float(gw_star @ g0 + c * g0.norm() * gw_star.norm()) <= float(objective.min()) + 1e-12
    # the un-rescaled update d = g0 + c||g0|| g_w / ||g_w|| is on the ball's boundary, and it
    # improves the worse task more than the mean gradient does
    theta, _ = _step("cagrad", [1.0, 0.5], [-1.0, 1.0], c=c, rescale=False)
    d = theta.double()
    assert math.isclose(float((d - g0).norm()), c * float(g0.norm()), rel_tol=1e-6)
    assert float((g @ d).min()) > float((g @ g0).min())


def test_nash_mtl_solution_satisfies_its_optimality_condition():
    # orthogonal (2, 2), (1, -1): K = diag(8, 2) / sqrt(68) + ridge, alpha_k = K_kk^(-1/2)
    theta, heads = _step("nash_mtl", [2.0, 2.0], [1.0, -1.0])
    k = torch.tensor([8.0, 2.0], dtype=torch.float64) / math.sqrt(68) + RIDGE
    a0, a1 = (1 / k.sqrt()).tolist()
    expected = torch.tensor([2 * a0 + a1, 2 * a0 - a1], dtype=torch.float64)
    assert torch.allclose(theta.double(), expected, rtol=1e-6)
    assert heads.tolist() == [3.0, 3.0]
    # three random tasks: (K alpha)_k = 1 / alpha_k, alpha > 0
    g = torch.randn(3, 7, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    gram = g @ g.T
    a = bargaining_solution(gram)
    kk = gram / torch.linalg.matrix_norm(gram) + RIDGE * torch.eye(3, dtype=torch.float64)
    assert (a > 0).all()
    assert torch.allclose((kk @ a) * a, torch.ones(3, dtype=torch.float64), atol=1e-10)
    assert bargaining_solution(torch.zeros(2, 2, dtype=torch.float64)).tolist() == [0.0, 0.0]


def test_aligned_mtl_gradients_have_condition_number_one():
    # (3, 3), (1, -1): G G^T = diag(18, 2), sigma^2 = 2, B = diag(1/3, 1): aligned (1, 1) and
    # (1, -1), both of norm sqrt(2); update (2, 0)
    theta, heads = _step("aligned_mtl", [3.0, 3.0], [1.0, -1.0])
    assert torch.allclose(theta, torch.tensor([2.0, 0.0]), atol=1e-6)
    assert heads.tolist() == [3.0, 3.0]
    g = torch.randn(3, 9, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    gram = g @ g.T
    eigenvalues = torch.linalg.eigvalsh(gram)
    assert float(eigenvalues.max() / eigenvalues.min()) > 1.5  # not aligned to start with
    for scale, sigma2 in [
        ("min", eigenvalues.min()),
        ("median", eigenvalues.median()),
        ("rmse", eigenvalues.mean()),
    ]:
        aligned = alignment_matrix(gram, scale) @ g
        singular = torch.linalg.svdvals(aligned)
        assert float(singular.max() / singular.min()) == pytest.approx(1.0, abs=1e-9)
        assert torch.allclose(aligned @ aligned.T, sigma2 * torch.eye(3, dtype=torch.float64))
    # opposite gradients: one direction, aligned to itself and cancelling in the sum
    theta, _ = _step("aligned_mtl", [1.0, 1.0], [-1.0, -1.0])
    assert torch.allclose(theta, torch.zeros(2), atol=1e-6)


def test_metabalance_rescales_auxiliary_norms_by_the_moving_averages():
    model = Toy()
    bal = make_balancer({"name": "metabalance", "relax_factor": 0.7, "beta": 0.9}, TWO, model)
    # step 1: ||g_a|| = 5 (target), ||g_b|| = 1; m = 0.1 (5, 1); scale_b = 0.7 * 5 + 0.3 = 3.8
    bal.backward(model.losses([3.0, 4.0], [0.6, 0.8]), model)
    assert torch.allclose(model.theta.grad, torch.tensor([3.0 + 3.8 * 0.6, 4.0 + 3.8 * 0.8]))
    assert model.heads.grad.tolist() == [3.0, 3.0]
    # step 2: ||g_b|| = 2; m = 0.9 (0.5, 0.1) + 0.1 (5, 2) = (0.95, 0.29)
    model.theta.grad = model.heads.grad = None
    bal.backward(model.losses([3.0, 4.0], [1.2, 1.6]), model)
    scale = 0.7 * 0.95 / 0.29 + 0.3
    assert torch.allclose(model.theta.grad, torch.tensor([3.0 + 1.2 * scale, 4.0 + 1.6 * scale]))
    assert torch.allclose(bal.norms, torch.tensor([[0.95, 0.29]]))
    # relax 1: the auxiliary gradient takes the target's (moving-average) norm exactly
    theta, _ = _step("metabalance", [3.0, 4.0], [1.2, 1.6], relax_factor=1.0, target="b")
    # target b: m = 0.1 (5, 2), g_a scaled by 2/5 -> (1.2, 1.6), norm 2 = ||g_b||
    assert torch.allclose(theta, torch.tensor([1.2 + 1.2, 1.6 + 1.6]))
    with pytest.raises(MtlrecError) as err:
        make_balancer({"name": "metabalance", "target": "c"}, TWO, Toy())
    assert str(err.value) == "balance.target 'c' is not a task of this model; tasks: ['a', 'b']"


def test_rlw_draws_softmax_normal_weights_from_its_seed_and_resumes_them():
    model = Toy()
    bal = make_balancer({"name": "rlw", "seed": 3}, TWO, model)
    expected = torch.softmax(torch.randn(2, generator=torch.Generator().manual_seed(3)), 0)
    bal.backward(model.losses([1.0, 0.0], [0.0, 1.0]), model)
    assert torch.equal(model.theta.grad, expected)  # unit gradients e_1, e_2: d = lambda
    assert math.isclose(float(expected.sum()), 1.0, rel_tol=1e-6) and expected[0] != expected[1]
    again = make_balancer({"name": "rlw", "seed": 3}, TWO, Toy())
    again.load_state_dict(bal.state_dict())
    assert torch.equal(again.draw(), bal.draw())  # the resumed generator draws the same weights
    assert torch.equal(bal.current_weights(), torch.tensor([0.5, 0.5]))  # E[lambda] (val loss)
    assert bal.end_epoch()["weight/a"] == pytest.approx(float(expected[0]))


def test_famo_weights_and_logit_update():
    scale = nn.Parameter(torch.ones(()))
    bal = make_balancer({"name": "famo", "lr": 0.025, "weight_decay": 0.01}, TWO, Toy())
    # step 1: z = (1/2, 1/2), L = (1, 4): weights (z/L) / sum(z/L) = (0.8, 0.2); no update yet
    bal.backward(torch.tensor([1.0, 4.0]) * scale, Toy())
    assert math.isclose(float(scale.grad), 0.8 * 1 + 0.2 * 4, rel_tol=1e-6)
    assert bal.logits.tolist() == [0.0, 0.0]
    # step 2: L = (0.5, 4): delta = (ln 2, 0), grad xi = z (delta - z.delta) = (ln2/4, -ln2/4);
    # Adam's first step moves each logit by lr against the sign of its gradient
    scale.grad = None
    bal.backward(torch.tensor([0.5, 4.0]) * scale, Toy())
    assert torch.allclose(bal.logits, torch.tensor([-0.025, 0.025]), atol=1e-6)
    z = torch.softmax(torch.tensor([-0.025, 0.025]), 0)
    w = (z / torch.tensor([0.5, 4.0])) / (z / torch.tensor([0.5, 4.0])).sum()
    assert math.isclose(float(scale.grad), float(w @ torch.tensor([0.5, 4.0])), rel_tol=1e-5)
    assert torch.allclose(bal.current_weights(), z, atol=1e-6)
    # the logits' Adam state travels in the state dict
    again = make_balancer({"name": "famo"}, TWO, Toy())
    again.load_state_dict(bal.state_dict())
    for b in (bal, again):
        b.update_logits(torch.tensor([0.4, 3.0]))
    assert torch.equal(again.logits, bal.logits) and torch.equal(again.previous, bal.previous)


@pytest.mark.parametrize(
    ("options", "line"),
    [
        (
            {"name": "metabalance", "relax_factor": 2},
            "balance.relax_factor must be in [0, 1], got 2.0",
        ),
        ({"name": "metabalance", "beta": 1}, "balance.beta must be in [0, 1), got 1.0"),
        ({"name": "cagrad", "c": -0.1}, "balance.c must be >= 0, got -0.1"),
        ({"name": "famo", "lr": 0}, "balance.lr must be > 0, got 0.0"),
        ({"name": "famo", "weight_decay": -1}, "balance.weight_decay must be >= 0, got -1.0"),
        ({"name": "aligned_mtl", "scale": "max"}, None),
    ],
)
def test_an_option_out_of_range_is_one_line(options, line):
    with pytest.raises(MtlrecError) as err:
        make_balancer(options, TWO, Toy())
    if line is None:  # a choice: the schema's own line names the choices
        assert str(err.value).startswith("balance.scale='max': expected one of")
    else:
        assert str(err.value) == line


@pytest.mark.parametrize("balance", NEW)
def test_training_resumes_exactly_mid_epoch(tmp_path, monkeypatch, balance):
    """Stopped mid-epoch and resumed: the same weights, metrics and history as a straight
    run (the balancer's state - moving averages, generator, logits and their Adam - included)."""
    from mtlrec.experiment import run

    overrides = [
        *TINY,
        "model=mmoe",
        "model.num_experts=2",
        "model.expert_dims=[8]",
        "model.tower_dims=[4]",
        "trainer.batch_size=512",
        "trainer.epochs=1",
        f"balance={balance}",
    ]
    straight = tmp_path / "straight"
    run(compose_train(overrides), straight)
    run_dir = tmp_path / "run"

    def stopped_mid_epoch() -> None:
        state = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["train_state"]
        assert state["epoch"] == 1 and 0 < state["step"] < 6

    resumed = compose_train([*overrides, f"resume={run_dir}"])
    # 6 steps per epoch: k=3 stops mid-epoch
    stop_then_resume(
        monkeypatch, run, compose_train(overrides), resumed, run_dir, 3, stopped_mid_epoch
    )
    got, ref = (json.loads((d / "metrics.json").read_text()) for d in (run_dir, straight))
    assert got["status"] == "completed" and got["metrics"] == ref["metrics"]
    a, b = (
        torch.load(d / "checkpoints" / "last.pt", weights_only=True) for d in (run_dir, straight)
    )
    for k in b["model_state"]:
        assert torch.equal(a["model_state"][k], b["model_state"][k]), k
    # the balancer's columns: weight/ and its own (the epoch means carried over the stop)
    columns = f"^(weight/|{balance}/)"
    pd.testing.assert_frame_equal(
        pd.read_csv(run_dir / "history.csv").filter(regex=columns),
        pd.read_csv(straight / "history.csv").filter(regex=columns),
    )
