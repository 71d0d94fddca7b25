"""Model zoo III, hand-computed: PEPNet, STEM, AdaTT, DBMTL, DSelect-k, DCMT."""

from __future__ import annotations

import math

import pytest
import torch

from models.test_zoo import SPEC, inputs
from mtlrec.data.spec import DatasetSpec, FeatureSpec, FunnelSpec, TaskSpec
from mtlrec.errors import MtlrecError
from mtlrec.models import build_model
from mtlrec.models.dcmt import twin_risk
from mtlrec.models.dselect_k import code_bits, selector_distributions, smooth_step

B = 6


def build(spec=SPEC, **cfg):
    torch.manual_seed(0)
    return build_model({"embedding_dim": 4, **cfg}, spec, spec.tasks)


def relu_linear(x, linear):
    return x @ linear.weight.T + linear.bias


# -- DSelect-k ----------------------------------------------------------------------------------
def test_smooth_step_and_selector_by_hand():
    gamma = 2.0
    z = torch.tensor([-1.5, -1.0, -0.5, 0.0, 0.5, 1.0, 3.0], dtype=torch.float64)
    # cubic part on (-1, 1): -2/8 z^3 + 3/4 z + 1/2
    want = [0.0, 0.0, -0.25 * -0.125 - 0.375 + 0.5, 0.5, -0.25 * 0.125 + 0.375 + 0.5, 1.0, 1.0]
    torch.testing.assert_close(smooth_step(z, gamma), torch.tensor(want, dtype=torch.float64))
    assert code_bits(2).tolist() == [[0, 0], [0, 1], [1, 0], [1, 1]]
    # two bits: S(z1) = 0.84375, S(z2) = 1 -> codes 01 and 11 only: r = [0, .15625, 0, .84375]
    r = selector_distributions(torch.tensor([0.5, 2.0], dtype=torch.float64), code_bits(2), gamma)
    torch.testing.assert_close(r, torch.tensor([0.0, 0.15625, 0.0, 0.84375], dtype=torch.float64))


def test_dselect_k_gate_mixes_k_selectors_and_its_regulariser():
    model, _ = build(name="dselect_k", num_experts=3, k=2, expert_dims=[5], tower_dims=[])
    sparse, dense = inputs()
    out = model(sparse, dense)
    x = model.embedding(sparse, dense)
    g = model.gates
    z = relu_linear(x, g.selector_logits).view(B, 2, 2, 2)  # [B, tasks, k, m]
    a = torch.softmax(relu_linear(x, g.selector_weights).view(B, 2, 2), -1)
    s = smooth_step(z, 1.0)
    for b in range(B):
        for t in range(2):
            r = [
                [
                    (s[b, t, i, 0] if j >> 1 else 1 - s[b, t, i, 0])
                    * (s[b, t, i, 1] if j & 1 else 1 - s[b, t, i, 1])
                    for j in range(4)
                ]
                for i in range(2)
            ]
            want = [a[b, t, 0] * r[0][e] + a[b, t, 1] * r[1][e] for e in range(3)]  # code 3: none
            torch.testing.assert_close(out["gates"][b, t], torch.stack(want))
            ent = sum(
                -p * math.log(p) for sel in r for p in (float(v.detach()) for v in sel) if p > 0
            )
            invalid = float((r[0][3] + r[1][3]).detach())
            if t == 0:
                row = ent + invalid
            else:
                row += ent + invalid
        assert out["selector_penalty"][b].item() == pytest.approx(row, rel=1e-5)
    torch.testing.assert_close(model.extra_loss(out, None), 0.1 * out["selector_penalty"].mean())
    # the mixture: y_t = head(sum_e g_te f_e)
    f = model.experts(x)
    head = model.towers.linears[0]
    mixed = torch.einsum("bte,ebh->tbh", out["gates"], f)
    want = (torch.bmm(mixed, head.weight) + head.bias).squeeze(-1)
    torch.testing.assert_close(out["ctr"], want[0])


def test_dselect_k_selectors_become_one_hot_when_saturated():
    model, _ = build(name="dselect_k", num_experts=4, k=1)
    with torch.no_grad():
        model.gates.selector_logits.weight.zero_()
        model.gates.selector_logits.bias.copy_(torch.tensor([5.0, -5.0, -5.0, 5.0]))
    out = model(*inputs())
    # task 0 selects code 10 = expert 2, task 1 code 01 = expert 1; zero entropy
    assert out["gates"][:, 0].tolist() == [[0.0, 0.0, 1.0, 0.0]] * B
    assert out["gates"][:, 1].tolist() == [[0.0, 1.0, 0.0, 0.0]] * B
    assert out["selector_penalty"].abs().max().item() == 0.0


# -- AdaTT --------------------------------------------------------------------------------------
def test_adatt_fusion_unit_by_hand():
    model, _ = build(name="adatt", num_levels=1, expert_dims=[3], tower_dims=[])
    sparse, dense = inputs()
    out = model(sparse, dense)
    x = model.embedding(sparse, dense)
    lvl = model.levels[0]
    f = lvl.experts(x)  # [3, B, H]: ctr's expert, cvr's expert, the shared one
    w = lvl.gates.linears[0]
    head = model.towers.linears[0]
    for t, name in enumerate(["ctr", "cvr"]):
        g = torch.softmax(x @ w.weight[t * 3 : t * 3 + 3].T + w.bias[t * 3 : t * 3 + 3], -1)
        fused = sum(g[:, e : e + 1] * f[e] for e in range(3)) + f[t]  # + the own expert, weight 1
        want = (fused @ head.weight[t] + head.bias[t]).squeeze(-1)
        torch.testing.assert_close(out[name], want, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(out["gates"][:, t], g)
    assert lvl.units == 2 and lvl.self_weights is None  # no shared unit on the last level


def test_adatt_learned_residual_and_levels():
    model, _ = build(name="adatt", num_levels=2, num_task_experts=2, num_shared_experts=2)
    lvl0, lvl1 = model.levels
    assert lvl0.units == 3 and lvl1.units == 2  # the last level has no shared unit
    assert lvl0.self_weights.shape == (3, 6)
    # only own experts carry residual weights
    assert lvl0.own.tolist() == [
        [1, 1, 0, 0, 0, 0],
        [0, 0, 1, 1, 0, 0],
        [0, 0, 0, 0, 1, 1],
    ]
    out = model(*inputs())
    assert out["gates"].shape == (B, 2, 6)
    torch.testing.assert_close(out["gates"].sum(-1), torch.ones(B, 2))


# -- STEM ---------------------------------------------------------------------------------------
def test_stem_gradient_reaches_only_the_shared_and_own_tables():
    model, _ = build(name="stem", num_levels=2, expert_dims=[5], tower_dims=[3])
    assert model.embedding.tables[0].weight.shape == (15, 3 * 4)  # T + 1 = 3 copies
    sparse, dense = inputs()
    for t, name in enumerate(["ctr", "cvr"]):
        model.zero_grad()
        model(sparse, dense)[name].sum().backward()
        grad = model.embedding.tables[0].weight.grad.view(15, 3, 4)
        other = 1 - t
        assert grad[:, t].abs().sum() > 0 and grad[:, 2].abs().sum() > 0
        assert grad[:, other].abs().sum() == 0  # the other task's table: no gradient
        w = model.levels[0].experts.linears[0].weight.grad  # [E, in, H]: ctr, cvr, shared
        assert w[other].abs().sum() == 0 and w[t].abs().sum() > 0


def test_stem_task_output_by_hand():
    model, _ = build(name="stem", expert_dims=[5], tower_dims=[])
    sparse, dense = inputs()
    out = model(sparse, dense)
    x = model.embedding(sparse, dense)  # [3, B, in]
    lvl = model.levels[0]
    f = lvl.experts(x)  # expert e reads copy e (ctr, cvr, shared)
    head = model.towers.linears[0]
    for t, name in enumerate(["ctr", "cvr"]):
        gl = lvl.gates.linears[0]
        g = torch.softmax((x[t] + x[2]) @ gl.weight[t] + gl.bias[t], -1)  # [B, 3]
        h = sum(g[:, e : e + 1] * f[e] for e in range(3))
        torch.testing.assert_close(out[name], (h @ head.weight[t] + head.bias[t]).squeeze(-1))


# -- DBMTL --------------------------------------------------------------------------------------
def test_dbmtl_relation_chain_by_hand_and_gradient_flows_upstream():
    model, _ = build(name="dbmtl", bottom_dims=[6], tower_dims=[5], relation_dims=[3])
    assert model.graph == {"ctr": [], "cvr": ["ctr"]}
    sparse, dense = inputs()
    out = model(sparse, dense)
    b = model.bottom(model.embedding(sparse, dense))
    r_ctr = model.relation["ctr"](model.towers["ctr"](b))
    r_cvr = model.relation["cvr"](torch.cat([model.towers["cvr"](b), r_ctr], -1))
    torch.testing.assert_close(out["ctr"], model.heads["ctr"](r_ctr).squeeze(-1))
    torch.testing.assert_close(out["cvr"], model.heads["cvr"](r_cvr).squeeze(-1))
    out["cvr"].sum().backward()
    assert model.relation["ctr"][0].weight.grad.abs().sum() > 0  # cvr's loss trains ctr's link
    model.zero_grad()
    model(sparse, dense)["ctr"].sum().backward()
    assert model.relation["cvr"][0].weight.grad is None or (
        model.relation["cvr"][0].weight.grad.abs().sum() == 0
    )


def test_dbmtl_task_graph_orders_and_rejects_cycles():
    spec = DatasetSpec(
        "three",
        (FeatureSpec("user", "sparse", 4), FeatureSpec("price", "dense")),
        ("a", "b", "c"),
        (TaskSpec("a", "a"), TaskSpec("b", "b"), TaskSpec("c", "c")),
    )
    model, _ = build(spec, name="dbmtl", relations={"a": ["c"], "b": ["a", "c"]})
    assert list(model.graph) == ["c", "a", "b"]
    assert model.relation["b"][0].in_features == 32 + 2 * 16
    none, _ = build(spec, name="dbmtl", bottom="mmoe", relations={})
    assert none.graph == {"a": [], "b": [], "c": []}
    assert none(torch.tensor([[1]]), torch.zeros(1, 1))["gates"].shape == (1, 3, 4)
    cases = {
        "model.relations has a cycle among tasks ['a', 'b']; a task graph must be acyclic": {
            "a": ["b"],
            "b": ["a"],
        },
        "model.relations: 'd' is not a task of this run; the tasks are ['a', 'b', 'c']": {
            "a": ["d"]
        },
        "model.relations.a lists the task itself": {"a": ["a"]},
    }
    for message, relations in cases.items():
        with pytest.raises(MtlrecError) as err:
            build(spec, name="dbmtl", relations=relations)
        assert str(err.value) == message


# -- PEPNet -------------------------------------------------------------------------------------
GROUPED = DatasetSpec(
    name="grouped",
    features=(
        FeatureSpec("user", "sparse", 7),
        FeatureSpec("item", "sparse", 5),
        FeatureSpec("shop", "sparse", 3),
        FeatureSpec("price", "dense"),
    ),
    labels=("click", "conversion"),
    tasks=(TaskSpec("ctr", "click"), TaskSpec("cvr", "conversion", where="click")),
    funnel=FunnelSpec("click", "conversion"),
    feature_groups={"domain": ["shop"], "person": ["user", "item"]},
)


def gate_nu(x, gate, scale=2.0):
    return scale * torch.sigmoid(relu_linear(torch.relu(relu_linear(x, gate.hidden)), gate.out))


def test_pepnet_epnet_and_ppnet_by_hand():
    model, _ = build(
        GROUPED, name="pepnet", domain_groups=["domain"], prior_groups=["person"], tower_dims=[3]
    )
    sparse, dense = inputs()
    out = model(sparse, dense)
    e = model.embedding(sparse, dense)  # [B, 4 (domain) + 4 (person) + 1]
    assert e.shape == (B, 9)
    o_ep = gate_nu(torch.cat([e[:, 0:4], e], -1), model.epnet) * e
    prior_in = torch.cat([e[:, 4:8], o_ep], -1)
    d0 = gate_nu(prior_in, model.ppnet[0]).view(B, 2, 9)
    d1 = gate_nu(prior_in, model.ppnet[1]).view(B, 2, 3)
    hidden, head = model.layers[0].linears[0], model.layers[1].linears[0]
    for t, name in enumerate(["ctr", "cvr"]):
        h = torch.relu((d0[:, t] * o_ep) @ hidden.weight[t] + hidden.bias[t])
        y = ((d1[:, t] * h) @ head.weight[t] + head.bias[t]).squeeze(-1)
        torch.testing.assert_close(out[name], y)
    gates = gate_nu(prior_in, model.ppnet[0])
    assert ((gates > 0) & (gates < 2)).all()


def test_pepnet_stop_gradients_and_unknown_group():
    model, _ = build(GROUPED, name="pepnet", domain_groups=["domain"], prior_groups=["person"])
    sparse, dense = inputs()
    # PPNet's gates read sg(O_ep): a loss on the PPNet gate alone trains no EPNet weight
    emb = model.embedding(sparse, dense)
    o_ep = model.epnet(torch.cat([emb[:, 0:4], emb.detach()], -1)) * emb
    gate = model.ppnet[0](torch.cat([emb[:, 4:8], o_ep.detach()], -1))
    gate.sum().backward()
    assert model.epnet.out.weight.grad is None
    grad = model.embedding.tables[0].weight.grad  # only user/item rows (the prior group) moved
    assert grad[12:].abs().sum() == 0 and grad[:12].abs().sum() > 0
    with pytest.raises(MtlrecError) as err:
        build(GROUPED, name="pepnet", prior_groups=["context"])
    assert str(err.value) == (
        "model.prior_groups: 'context' is not a feature group of dataset 'grouped'; its groups: "
        "['domain', 'person']"
    )
    with pytest.raises(MtlrecError) as err:
        build(name="pepnet", domain_groups=["context"])
    assert str(err.value).endswith("its groups: none (set dataset.feature_groups)")


# -- DCMT ---------------------------------------------------------------------------------------
def test_dcmt_twin_risk_on_four_rows_by_hand():
    cvr = torch.tensor([0.0, math.log(4.0), -1.0, 1.0])  # pCVR .5, .8, .2689, .7311
    twin = torch.tensor([0.0, 0.0, 1.0, -2.0])  # pCVR* .5, .5, .7311, .1192
    p = torch.tensor([0.5, 0.25, 0.2, 0.6])
    click = torch.tensor([1.0, 1.0, 0.0, 0.0])
    conv = torch.tensor([1.0, 0.0, 0.0, 0.0])
    s = [1 / (1 + math.exp(-v)) for v in cvr.tolist()]
    st = [1 / (1 + math.exp(-v)) for v in twin.tolist()]
    ips = (
        -math.log(s[0]) / 0.5  # clicked, converted: factual BCE(1) / p
        + -math.log(1 - s[1]) / 0.25  # clicked, not converted: factual BCE(0) / p
        + -math.log(st[2]) / 0.8  # unclicked: counterfactual label 1, / (1 - p)
        + -math.log(st[3]) / 0.4
    ) / 4
    constraint = sum(abs(1 - a - b) for a, b in zip(s, st, strict=True)) / 4
    got = twin_risk(cvr, twin, p, click, conv, constraint_weight=0.5)
    assert got.item() == pytest.approx(ips + 0.5 * constraint, rel=1e-6)


def test_dcmt_extra_loss_clips_a_detached_propensity():
    model, tasks = build(name="dcmt", propensity_clip=0.1, counterfactual_weight=2.0)
    assert [t.name for t in tasks] == ["ctr", "ctcvr"]
    out = model(*inputs(4))
    assert set(out) == {"ctr", "cvr", "ctcvr", "cvr_counterfactual"}
    assert "cvr_counterfactual" not in model.output_types
    out = {**out, "ctr": torch.tensor([-9.0, 0.0, 9.0, 1.0])}
    labels = torch.tensor([[1.0, 1.0], [0.0, 0.0], [1.0, 0.0], [0.0, 0.0]])
    p = torch.tensor([0.1, 0.5, 0.9, 1 / (1 + math.exp(-1.0))])
    want = twin_risk(out["cvr"], out["cvr_counterfactual"], p, labels[:, 0], labels[:, 1], 0.1)
    torch.testing.assert_close(model.extra_loss(out, labels), 2.0 * want)
    fresh = model(*inputs(4))
    model.extra_loss(fresh, labels).backward()
    ctr_head = model.towers["ctr"][1]
    assert ctr_head.weight.grad is None or ctr_head.weight.grad.abs().sum() == 0
    assert model.twin[1].weight.grad.abs().sum() > 0


@pytest.mark.parametrize(
    ("cfg", "message"),
    [
        (
            {"name": "dselect_k", "k": 9},
            "model.k must be <= model.num_experts (8), got 9",
        ),
        (
            {"name": "dselect_k", "num_experts": 1, "k": 1},
            "model.num_experts must be >= 2 for DSelect-k (a selector picks one of them), got 1",
        ),
        (
            {"name": "dbmtl", "bottom": "ple"},
            "model.bottom 'ple' is unknown; use one of ['mlp', 'mmoe']",
        ),
        (
            {"name": "dbmtl", "relation_dims": []},
            "model.relation_dims=[] leaves no relation layer for task 'cvr' to read its upstream "
            "tasks ['ctr']; set model.relation_dims or model.relations={}",
        ),
        (
            {"name": "dcmt", "propensity_clip": 0.5},
            "model.propensity_clip must be in (0, 0.5) (pCTR is clipped to [eps, 1 - eps] for the "
            "weights 1/p and 1/(1 - p)), got 0.5",
        ),
        ({"name": "pepnet", "gate_scale": 0.0}, "model.gate_scale must be > 0, got 0.0"),
        (
            {"name": "adatt", "num_shared_experts": -1},
            "model.num_shared_experts must be an integer >= 0, got -1",
        ),
    ],
)
def test_zoo3_config_errors_are_one_exact_line(cfg, message):
    with pytest.raises(MtlrecError) as err:
        build(**cfg)
    assert str(err.value) == message


@pytest.mark.parametrize("name", ["pepnet", "stem", "adatt", "dbmtl", "dselect_k"])
def test_shared_trunk_last_layer_is_a_parameter_both_tasks_reach(name):
    model, _ = build(name=name)
    layer = model.shared_trunk_last_layer()
    assert isinstance(layer, torch.nn.Parameter)
    for task in ("ctr", "cvr"):
        model.zero_grad()
        model(*inputs())[task].sum().backward()
        assert layer.grad is not None and layer.grad.abs().sum() > 0
