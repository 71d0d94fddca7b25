"""Each balancer against a hand-computed small case."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from mtlrec.data.spec import TaskSpec
from mtlrec.errors import MtlrecError
from mtlrec.training.balance import (
    DynamicWeightAverage,
    GradNorm,
    PCGrad,
    find_shared,
    make_balancer,
    task_gradients,
)

TWO = (TaskSpec("a", "la"), TaskSpec("b", "lb"))


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


def test_pcgrad_projects_two_conflicting_gradients():
    # g1 = (1, 0), g2 = (-1, 1): g1.g2 = -1 < 0
    # g1' = g1 + 1/2 g2 = (0.5, 0.5);  g2' = g2 + 1/1 g1 = (0, 1);  sum = (0.5, 1.5)
    flat = torch.tensor([[1.0, 0.0], [-1.0, 1.0]])
    assert PCGrad.project(flat, [[1], [0]]).tolist() == [0.5, 1.5]
    # in a model: g1 = (1, 0.5), g2 = (-1, 1), g1.g2 = -0.5
    # g1' = g1 + 0.5/2 g2 = (0.75, 0.75);  g2' = g2 + 0.5/1.25 g1 = (-0.6, 1.2);  sum (0.15, 1.95)
    model = Toy()
    bal = make_balancer({"name": "pcgrad", "seed": 0}, TWO, model)
    bal.backward(model.losses([1.0, 0.5], [-1.0, 1.0]), model)
    assert torch.allclose(model.theta.grad, torch.tensor([0.15, 1.95]))
    assert model.heads.grad.tolist() == [3.0, 3.0]  # task-specific: plain sum, not projected
    assert bal.shared_parameters() == [model.theta]


def test_pcgrad_leaves_agreeing_gradients_alone():
    model = Toy()
    bal = make_balancer({"name": "pcgrad"}, TWO, model)
    bal.backward(model.losses([1.0, 0.0], [1.0, 1.0]), model)
    assert model.theta.grad.tolist() == [2.0, 1.0]


def test_pcgrad_three_tasks_order_matters_and_is_seeded():
    flat = torch.tensor([[1.0, 0.0], [-1.0, 1.0], [0.0, -1.0]])
    # task 0 against 1 then 2: (1,0)+(1/2)(-1,1) = (.5,.5); dot with (0,-1) = -.5 -> (.5, 0)
    out = PCGrad.project(flat, [[1, 2], [0, 2], [0, 1]])
    g0 = torch.tensor([0.5, 0.0])
    # task 1: vs 0: (-1,1)+(1,0) = (0,1); vs 2: dot -1 -> (0,1)+(-1)(0,-1)... = (0, 0)
    g1 = torch.tensor([0.0, 0.0])
    # task 2: vs 0: dot 0 -> no change; vs 1: dot -1, |g1|^2=2 -> (0,-1)+.5(-1,1) = (-.5,-.5)
    g2 = torch.tensor([-0.5, -0.5])
    assert torch.allclose(out, g0 + g1 + g2)


def test_packed_tensor_projects_only_its_shared_rows():
    """Rows 0 and 1 of w belong to one task each (like PLE's task-specific experts packed with
    the shared one in row 2): PCGrad must not leak a projection into them."""
    model = nn.Module()
    model.w = nn.Parameter(torch.ones(3, 2))
    a = torch.tensor([1.0, 0.5])
    b = torch.tensor([-1.0, 1.0])
    losses = torch.stack(
        [
            (model.w[0] * a).sum() + (model.w[2] * a).sum(),
            (model.w[1] * b).sum() + (model.w[2] * b).sum(),
        ]
    )
    bal = make_balancer({"name": "pcgrad"}, TWO, model)
    bal.backward(losses, model)
    assert bal._rows[0].tolist() == [False, False, True]
    assert torch.allclose(model.w.grad[0], a) and torch.allclose(model.w.grad[1], b)
    assert torch.allclose(model.w.grad[2], torch.tensor([0.15, 1.95]))  # as in the case above
    # GradNorm's gradient norms are taken over the shared row only: ||a|| and ||b||
    gn = make_balancer({"name": "gradnorm", "alpha": 0.0}, TWO, model)
    losses = torch.stack(
        [
            (model.w[0] * a).sum() + (model.w[2] * a).sum(),
            (model.w[1] * b).sum() + (model.w[2] * b).sum(),
        ]
    )
    gn.backward(losses, model)
    # alpha 0: target = mean(G) = (||a|| + ||b||)/2; G_a = ||a|| = 1.118 < target -> grad -||a||
    assert torch.allclose(gn.task_weights.grad, torch.tensor([-a.norm(), b.norm()]))


def test_find_shared_treats_packed_per_task_slices_as_task_specific():
    packed = nn.Parameter(torch.ones(2, 3))  # row k is task k's
    common = nn.Parameter(torch.ones(3))
    losses = torch.stack([(packed[0] * common).sum(), (packed[1] * common).sum()])
    grads = task_gradients(losses, [packed, common])
    assert find_shared([packed, common], grads) == [False, True]


def test_gradnorm_weight_update_on_a_two_task_toy():
    model = Toy()
    bal = make_balancer({"name": "gradnorm", "alpha": 1.0}, TWO, model)
    assert isinstance(bal, GradNorm)
    bal.initial_losses.copy_(torch.tensor([2.0, 1.0]))
    # L = (1, 1): L/L0 = (.5, 1), r = (2/3, 4/3); w = (1, 1), ||grad_W L|| = (2, 1)
    # G = (2, 1), mean 1.5, target = 1.5 r = (1, 2); grad_w = sign(G - target) ||grad_W L|| = (2, -1)
    grad_w, target = bal.weight_gradient(torch.tensor([1.0, 1.0]), torch.tensor([2.0, 1.0]))
    assert torch.allclose(target, torch.tensor([1.0, 2.0]))
    assert grad_w.tolist() == [2.0, -1.0]
    # one SGD step (lr 0.1) then renormalise to sum T = 2: (0.8, 1.1) * 2 / 1.9
    with torch.no_grad():
        bal.task_weights -= 0.1 * grad_w
    bal.renormalize()
    assert torch.allclose(bal.task_weights, torch.tensor([1.6 / 1.9, 2.2 / 1.9]))
    assert math.isclose(float(bal.task_weights.detach().sum()), 2.0, rel_tol=1e-6)


def test_gradnorm_backward_sets_network_and_weight_gradients():
    model = Toy()
    bal = make_balancer({"name": "gradnorm", "alpha": 1.0}, TWO, model)
    # last shared layer: theta is 1-D, so give it a 2-D shared weight
    model.w = nn.Parameter(torch.ones(1, 2))
    model.theta.requires_grad_(False)
    losses = torch.stack([2 * model.w[0, 0] + model.heads[0], model.w[0, 0] + model.heads[1]])
    bal.backward(losses, model)
    # first step: r = (1, 1), G = (2, 1), target = (1.5, 1.5) -> grad_w = (+2, -1)
    assert bal.task_weights.grad.tolist() == [2.0, -1.0]
    assert model.w.grad.tolist() == [[3.0, 0.0]]  # w1 * 2 + w2 * 1
    assert bal.initial_losses.tolist() == [2.0, 1.0]


def test_gradnorm_refuses_a_model_without_shared_layer():
    model = Toy()
    model.theta.requires_grad_(False)
    bal = make_balancer({"name": "gradnorm"}, TWO, model)
    with pytest.raises(MtlrecError, match="needs a layer shared by the tasks"):
        bal.backward(model.losses([1.0, 0.0], [1.0, 1.0]), model)


def test_dwa_weights_from_given_losses():
    # r = (0.5/1, 1.8/2) = (0.5, 0.9); w = 2 softmax(r / 2) -> w_a = 2 / (1 + e^0.2)
    w = DynamicWeightAverage.weights_from(torch.tensor([0.5, 1.8]), torch.tensor([1.0, 2.0]), 2.0)
    assert torch.allclose(w, torch.tensor([2 / (1 + math.exp(0.2)), 2 - 2 / (1 + math.exp(0.2))]))
    model = Toy()
    bal = make_balancer({"name": "dwa", "temperature": 2.0}, TWO, model)
    rows = []
    for epoch_losses in ([1.0, 2.0], [0.5, 1.8], [0.4, 1.7]):
        for _ in range(3):
            p = torch.tensor(epoch_losses, requires_grad=True)
            bal.backward(p * 1.0, model)
        rows.append(bal.end_epoch())
    assert rows[0] == {"weight/a": 1.0, "weight/b": 1.0}
    assert rows[1] == {"weight/a": 1.0, "weight/b": 1.0}
    assert math.isclose(rows[2]["weight/a"], 2 / (1 + math.exp(0.2)), rel_tol=1e-6)


def test_uncertainty_loss_value_and_gradient():
    tasks = (TaskSpec("click", "c", "binary"), TaskSpec("watch", "w", "regression"))
    bal = make_balancer({"name": "uncertainty", "init_log_var": 0.0}, tasks, Toy())
    with torch.no_grad():
        bal.log_vars.copy_(torch.tensor([0.0, math.log(2.0)]))
    losses = torch.tensor([1.0, 2.0])
    # binary: e^0 * 1 + 0 = 1;  regression: 0.5 e^{-log 2} * 2 + 0.5 log 2 = 0.5 + 0.5 log 2
    expected = 1.0 + 0.5 + 0.5 * math.log(2.0)
    assert math.isclose(float(bal.loss(losses).detach()), expected, rel_tol=1e-6)
    bal.backward(losses, Toy())
    # d/ds: -scale e^{-s} L + 1/2 = (-1 + 0.5, -0.5 + 0.5)
    assert torch.allclose(bal.log_vars.grad, torch.tensor([-0.5, 0.0]))
    row = bal.end_epoch()
    assert row["weight/click"] == 1.0 and math.isclose(row["weight/watch"], 0.25, rel_tol=1e-6)


def test_fixed_weights_and_errors():
    model = Toy()
    bal = make_balancer({"name": "fixed", "weights": {"b": 0.5}}, TWO, model)
    bal.backward(model.losses([1.0, 0.0], [0.0, 2.0]), model)
    assert model.theta.grad.tolist() == [1.0, 1.0]
    assert bal.end_epoch() == {"weight/a": 1.0, "weight/b": 0.5}
    with pytest.raises(MtlrecError) as e:
        make_balancer({"name": "fixed", "weights": {"zz": 1.0}}, TWO, model)
    assert str(e.value) == (
        "balance.weights names unknown task(s) ['zz']; the trained tasks are ['a', 'b']"
    )
    with pytest.raises(MtlrecError) as e:
        make_balancer({"name": "dwa", "alpha": 1.0}, TWO, model)
    assert str(e.value) == (
        "balance.alpha is not a key of balance=dwa; its keys are ['name', 'temperature']"
    )
    with pytest.raises(MtlrecError, match="balance.name 'nope' is unknown"):
        make_balancer({"name": "nope"}, TWO, model)


def test_extra_loss_is_added_unbalanced_and_logged():
    model = Toy()
    bal = make_balancer({"name": "fixed", "weights": {"a": 0.0, "b": 0.0}}, TWO, model)
    extra = 5 * model.theta[1]
    bal.backward(model.losses([1.0, 0.0], [0.0, 1.0]), model, extra)
    assert model.theta.grad.tolist() == [0.0, 5.0]
    row = bal.end_epoch()
    assert row["train/extra_loss"] == 0.0  # theta = 0


def test_pcgrad_projection_order_survives_a_checkpoint():
    tasks = tuple(TaskSpec(n, n) for n in "abcd")
    first = make_balancer({"name": "pcgrad", "seed": 3}, tasks, Toy())
    torch.randperm(3, generator=first.generator)  # advance the order generator
    state = first.state_dict()
    second = make_balancer({"name": "pcgrad", "seed": 99}, tasks, Toy())
    second.load_state_dict(state)
    assert torch.equal(
        torch.randperm(3, generator=first.generator), torch.randperm(3, generator=second.generator)
    )


def test_embedding_table_is_shared_whole():
    """An embedding row is an id any task may see later: never split into task rows."""
    model = nn.Module()
    model.emb = nn.Embedding(3, 2)
    rows_a, rows_b = model.emb(torch.tensor([0, 2])), model.emb(torch.tensor([1, 2]))
    losses = torch.stack([rows_a.sum(), rows_b.sum()])
    bal = make_balancer({"name": "pcgrad"}, TWO, model)
    bal.backward(losses, model)
    assert bal._rows[0].tolist() == [True, True, True]
