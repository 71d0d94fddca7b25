"""Model zoo II, hand-computed: DIVISION, ESMM-NS, attention gates, FM and DCN-v2, ESCM², SNR."""

from __future__ import annotations

import math

import pytest
import torch

from mtlrec.data.spec import DatasetSpec, FeatureSpec, FunnelSpec, TaskSpec
from mtlrec.errors import MtlrecError
from mtlrec.models import build_model
from mtlrec.models.division import divide
from mtlrec.models.escm2 import counterfactual_risk
from mtlrec.models.interaction import CrossLayer, factorization_machine
from mtlrec.models.mmoe import AttentionGate
from mtlrec.models.snr import expected_l0, hard_concrete, hard_concrete_mean

SPEC = DatasetSpec(
    name="toy",
    features=(
        FeatureSpec("user", "sparse", 7),
        FeatureSpec("item", "sparse", 5),
        FeatureSpec("shop", "sparse", 3),
        FeatureSpec("price", "dense"),
    ),
    labels=("click", "conversion"),
    tasks=(TaskSpec("ctr", "click"), TaskSpec("cvr", "conversion", where="click")),
    funnel=FunnelSpec("click", "conversion"),
)
B = 6


def inputs(n: int = B):
    g = torch.Generator().manual_seed(3)
    cols = [
        off + torch.randint(0, f.vocab_size, (n,), generator=g)
        for off, f in zip(SPEC.field_offsets, SPEC.sparse, strict=True)
    ]
    return torch.stack(cols, 1), torch.randn(n, 1, generator=g)


def build(**cfg):
    torch.manual_seed(0)
    return build_model({"embedding_dim": 4, **cfg}, SPEC, SPEC.tasks)


def logit(p: float) -> float:
    return math.log(p / (1 - p))


# -- DIVISION -------------------------------------------------------------------------------------
def test_division_quotient_and_clamp_by_hand():
    ctr = torch.tensor([0.0, 0.0, logit(0.1), logit(0.8)])  # pCTR 0.5, 0.5, 0.1, 0.8
    ctcvr = torch.tensor([logit(0.2), logit(0.6), logit(0.05), logit(0.8)])
    cvr, clamped = divide(ctr, ctcvr)
    # 0.2 / 0.5 = 0.4;  0.6 / 0.5 = 1.2 -> 1;  0.05 / 0.1 = 0.5;  0.8 / 0.8 = 1 (not above 1)
    torch.testing.assert_close(torch.sigmoid(cvr), torch.tensor([0.4, 1.0, 0.5, 1.0]))
    assert clamped.tolist() == [0.0, 1.0, 0.0, 0.0]
    assert torch.isfinite(cvr).all() and cvr[1].item() == pytest.approx(17.33, abs=0.01)


def test_division_model_two_networks_share_nothing():
    model, tasks = build(name="division", tower_dims=[8])
    assert [(t.name, t.label, t.where) for t in tasks] == [
        ("ctr", "click", None),
        ("ctcvr", "conversion", None),
    ]
    out = model(*inputs())
    assert set(out) == {"ctr", "ctcvr", "cvr", "cvr_clamped"}
    assert set(model.output_types) == {"ctr", "ctcvr", "cvr"}  # cvr_clamped is auxiliary
    q = torch.sigmoid(out["ctcvr"]) / torch.sigmoid(out["ctr"])
    torch.testing.assert_close(torch.sigmoid(out["cvr"]), q.clamp(max=1.0))
    torch.testing.assert_close(out["cvr_clamped"], (q > 1).float())
    out["ctr"].sum().backward()
    emb = model.embedding.tables[0].weight.grad.view(15, 2, 4)
    assert emb[:, 0].abs().sum() > 0 and emb[:, 1].abs().sum() == 0  # ctcvr's copy untouched
    assert all(lin.weight.grad[1].abs().sum() == 0 for lin in model.nets.linears)


# -- ESMM-NS ------------------------------------------------------------------------------------
def test_esmm_ns_gives_each_tower_its_own_embedding():
    model, _ = build(name="esmm", tower_dims=[8], share_embedding=False)
    out = model(*inputs())
    torch.testing.assert_close(
        torch.sigmoid(out["ctcvr"]), torch.sigmoid(out["ctr"]) * torch.sigmoid(out["cvr"])
    )
    out["cvr"].sum().backward()
    emb = model.embedding.tables[0].weight.grad.view(15, 2, 4)
    assert emb[:, 0].abs().sum() == 0 and emb[:, 1].abs().sum() > 0  # only the CVR tower's copy
    for backbone in ("deepfm", "dcn"):  # each tower's own FM term / cross layers
        ns, _ = build(name="esmm", tower_dims=[8], share_embedding=False, backbone=backbone)
        ns(*inputs())["ctr"].sum().backward()
        for p in ns.interaction.parameters():
            assert p.grad[1].abs().sum() == 0  # the CVR step's slice gets no CTR gradient
    with pytest.raises(MtlrecError, match="^model.share_embedding=false needs model.backbone"):
        build(name="esmm", share_embedding=False, backbone="mmoe")


# -- attention gates ----------------------------------------------------------------------------
def test_attention_gate_is_a_scaled_dot_product_softmax():
    torch.manual_seed(0)
    gate = AttentionGate(num_tasks=2, expert_dim=3, attention_dim=4)
    experts = torch.randn(5, 7, 3)  # [E, B, H]
    w = gate(experts)
    assert w.shape == (2, 7, 5)
    torch.testing.assert_close(w.sum(-1), torch.ones(2, 7))
    for t in range(2):
        for b in range(7):
            scores = [
                float((gate.query[t] @ (gate.key.weight @ experts[e, b])).detach()) / 2.0
                for e in range(5)
            ]
            m = max(scores)
            z = sum(math.exp(s - m) for s in scores)
            want = torch.tensor([math.exp(s - m) / z for s in scores])
            torch.testing.assert_close(w[t, b], want)


def test_mmoe_with_attention_gates_returns_them_as_gates():
    model, _ = build(name="mmoe", gate="attention", num_experts=3, expert_dims=[6])
    out = model(*inputs())
    assert out["gates"].shape == (B, 2, 3)
    torch.testing.assert_close(out["gates"].sum(-1), torch.ones(B, 2))
    assert not hasattr(model.gates, "linears")  # no input-side gate network
    with pytest.raises(MtlrecError, match=r"^model.gate_dims=\[4\] applies to gate=softmax only"):
        build(name="mmoe", gate="attention", gate_dims=[4])
    with pytest.raises(MtlrecError, match=r"^model.gate 'dot' is unknown; use one of"):
        build(name="mmoe", gate="dot")


# -- DeepFM / DCN-v2 ----------------------------------------------------------------------------
def test_fm_term_equals_the_explicit_pairwise_sum():
    torch.manual_seed(0)
    v = torch.randn(5, 4, 3, dtype=torch.float64)  # [B, F, d]
    want = torch.zeros(5, dtype=torch.float64)
    for i in range(4):
        for j in range(i + 1, 4):
            want += (v[:, i] * v[:, j]).sum(-1)
    torch.testing.assert_close(factorization_machine(v), want)


def test_dcn_cross_layer_equals_its_formula():
    torch.manual_seed(0)
    layer = CrossLayer(groups=1, dim=4)
    x0, x = torch.randn(1, 3, 4), torch.randn(1, 3, 4)
    w, b = layer.linear.weight[0], layer.linear.bias[0, 0]  # y = x @ w + b
    torch.testing.assert_close(layer(x0, x), x0 * (x @ w + b) + x)


@pytest.mark.parametrize("name", ["esmm", "shared_bottom", "mmoe", "single_task"])
def test_deepfm_adds_the_fm_term_to_each_logit_unscaled_by_default(name):
    """The paper: y_k = DNN_k + FM; model.fm_task_scale=true adds a per-task scale a_k (init 1):
    with a_k = 0 the FM term is gone, so the difference of the two logits is FM itself."""
    model, _ = build(name=name, backbone="deepfm")
    scaled, _ = build(name=name, backbone="deepfm", fm_task_scale=True)
    assert model.interaction.fm_scale is None and scaled.interaction.fm_scale is not None
    sparse, dense = inputs()
    with torch.no_grad():
        for m in (model, scaled):  # non-zero first-order weights, the same in both
            m.interaction.first_order.weight.normal_(generator=torch.Generator().manual_seed(1))
            m.interaction.first_order.dense.weight.fill_(0.5)
        scaled.interaction.fm_scale.zero_()
    out, plain = model(sparse, dense), scaled(sparse, dense)
    _, fm = model.interaction(model.embedding(sparse, dense), sparse, dense)
    assert fm is not None and fm.shape == (2, B)  # one row per loss task (step)
    torch.testing.assert_close(out["ctr"] - plain["ctr"], fm[0], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["esmm", "shared_bottom", "mmoe", "single_task"])
def test_dcn_backbone_feeds_crossed_features(name):
    model, _ = build(name=name, backbone="dcn", cross_layers=3)
    assert len(model.interaction.cross) == 3
    out = model(*inputs())
    assert all(out[k].shape == (B,) for k in model.output_types)
    x = model.embedding(*inputs())
    h, fm = model.interaction(x, *inputs())
    assert fm is None and h.shape == x.shape and not torch.equal(h, x)


@pytest.mark.parametrize("backbone", ["deepfm", "dcn"])
def test_single_task_backbones_keep_tasks_independent(backbone):
    model, _ = build(name="single_task", backbone=backbone, bottom_dims=[6], tower_dims=[3])
    model(*inputs())["ctr"].sum().backward()
    for p in [*model.interaction.parameters(), *model.nets.parameters()]:
        assert p.grad is None or p.grad[1:].abs().sum() == 0


def test_deepfm_needs_one_embedding_size():
    spec = DatasetSpec(
        "mixed",
        (FeatureSpec("a", "sparse", 3, embedding_dim=2), FeatureSpec("b", "sparse", 4)),
        ("y",),
        (TaskSpec("y", "y"),),
    )
    with pytest.raises(MtlrecError, match=r"has sizes \[2, 8\]$"):
        build_model(
            {"name": "shared_bottom", "backbone": "deepfm", "embedding_dim": 8}, spec, spec.tasks
        )


# -- ESCM² --------------------------------------------------------------------------------------
def test_escm2_ips_and_dr_risks_on_four_rows_by_hand():
    cvr = torch.tensor([0.0, logit(0.8), logit(0.3), 2.0])
    propensity = torch.tensor([0.5, 0.25, 0.05, 1.0])
    click = torch.tensor([1.0, 1.0, 0.0, 1.0])
    conversion = torch.tensor([1.0, 0.0, 0.0, 1.0])
    imputed = torch.tensor([0.3, 1.0, 0.2, 0.1])
    e = [math.log(2), -math.log(0.2), -math.log(0.7), math.log1p(math.exp(-2.0))]  # BCE per row
    ips = (e[0] / 0.5 + e[1] / 0.25 + 0 + e[3] / 1.0) / 4
    got, none = counterfactual_risk(cvr, propensity, click, conversion)
    assert none is None and got.item() == pytest.approx(ips, rel=1e-6)
    dr = (0.3 + (e[0] - 0.3) / 0.5 + 1.0 + (e[1] - 1.0) / 0.25 + 0.2 + 0.1 + (e[3] - 0.1)) / 4
    imp = ((e[0] - 0.3) ** 2 / 0.5 + (e[1] - 1.0) ** 2 / 0.25 + (e[3] - 0.1) ** 2) / 4
    got_dr, got_imp = counterfactual_risk(cvr, propensity, click, conversion, imputed)
    assert got_dr.item() == pytest.approx(dr, rel=1e-6)
    assert got_imp.item() == pytest.approx(imp, rel=1e-6)


def test_escm2_extra_loss_clips_propensities_from_the_ctr_tower():
    model, tasks = build(
        name="escm2", regularizer="dr", counterfactual_weight=0.5, propensity_clip=0.2
    )
    assert [t.name for t in tasks] == ["ctr", "ctcvr"]
    out = model(*inputs(4))
    imputed = out["cvr_imputed"]  # ê, a probability by default (the reference code)
    assert imputed.shape == (4,) and (imputed > 0).all() and (imputed < 1).all()
    out = {**out, "ctr": torch.tensor([-5.0, 0.0, 5.0, -10.0])}  # pCTR .0067, .5, .9933, 4.5e-5
    labels = torch.tensor([[1.0, 1.0], [1.0, 0.0], [0.0, 0.0], [1.0, 1.0]])
    p = torch.tensor([0.2, 0.5, torch.sigmoid(torch.tensor(5.0)).item(), 0.2])
    dr, imp = counterfactual_risk(out["cvr"], p, labels[:, 0], labels[:, 1], imputed)
    torch.testing.assert_close(model.extra_loss(out, labels), 0.5 * (dr + 1.0 * imp))
    # IPS: the propensity is a constant for the regularizer (never trains the CTR tower)
    ips_model, _ = build(name="escm2")
    o = ips_model(*inputs(4))
    ips_model.extra_loss(o, labels).backward()
    ctr_head = ips_model.towers["ctr"][1]
    assert ctr_head.weight.grad is None or ctr_head.weight.grad.abs().sum() == 0


# -- SNR ----------------------------------------------------------------------------------------
def test_hard_concrete_sample_for_fixed_uniform_draws_by_hand():
    beta, gamma, zeta = 2 / 3, -0.1, 1.1
    log_alpha = torch.tensor([0.0, 0.0, 1.0, -1.0], dtype=torch.float64)
    u = torch.tensor([0.5, 0.7, 0.9, 0.1], dtype=torch.float64)

    def by_hand(la, uu):
        s = 1 / (1 + math.exp(-(math.log(uu) - math.log(1 - uu) + la) / beta))
        return min(1.0, max(0.0, s * (zeta - gamma) + gamma))

    want = [by_hand(la, uu) for la, uu in zip(log_alpha.tolist(), u.tolist(), strict=True)]
    assert want[0] == pytest.approx(0.5) and want[2] == 1.0 and want[3] == 0.0  # clamped ends
    assert want[1] == pytest.approx(0.78089 * 1.2 - 0.1, abs=1e-4)
    got = hard_concrete(log_alpha, u, beta, gamma, zeta)
    torch.testing.assert_close(got, torch.tensor(want, dtype=torch.float64))
    torch.testing.assert_close(
        hard_concrete_mean(torch.tensor([0.0, 10.0]), gamma, zeta), torch.tensor([0.5, 1.0])
    )


def test_l0_expectation_formula():
    beta, gamma, zeta = 2 / 3, -0.1, 1.1
    la = torch.tensor([0.0, 2.0, -3.0], dtype=torch.float64)
    want = [1 / (1 + math.exp(-(a - beta * math.log(-gamma / zeta)))) for a in la.tolist()]
    assert want[0] == pytest.approx(0.8318, abs=1e-4)  # sigmoid(2/3 ln 11)
    torch.testing.assert_close(
        expected_l0(la, beta, gamma, zeta), torch.tensor(want, dtype=torch.float64)
    )
    # and it is P(z > 0) of the sampler: a Monte-Carlo check on 200k draws
    g = torch.Generator().manual_seed(0)
    u = torch.rand(200_000, generator=g, dtype=torch.float64).clamp(1e-9, 1 - 1e-9)
    frac = hard_concrete(torch.tensor(0.0, dtype=torch.float64), u, beta, gamma, zeta) > 0
    assert frac.double().mean().item() == pytest.approx(want[0], abs=0.005)


@pytest.mark.parametrize("connection", ["trans", "aver"])
def test_snr_routes_lower_into_upper_subnetworks_then_into_the_towers(connection):
    """The paper's two levels: 3 lower sub-networks -> (codes z [2, 3]) -> 2 upper ones ->
    (codes c [2 tasks, 2]) -> the towers; the routing shapes and the outputs by hand."""
    model, _ = build(
        name="snr",
        connection=connection,
        num_subnetworks=3,
        subnetwork_dims=[5],
        num_upper_subnetworks=2,
        upper_subnetwork_dims=[4],
        tower_dims=[],
    )
    low, task = model.lower_routing, model.task_routing
    assert low.log_alpha.shape == (2, 3) and task.log_alpha.shape == (2, 2)
    if connection == "trans":
        assert low.transform.shape == (2, 3, 5, 5) and task.transform.shape == (2, 2, 4, 4)
    else:
        assert low.transform is None and task.transform is None
    model.eval()
    sparse, dense = inputs()
    out = model(sparse, dense)
    z = hard_concrete_mean(low.log_alpha, -0.1, 1.1)
    c = hard_concrete_mean(task.log_alpha, -0.1, 1.1)
    torch.testing.assert_close(out["gates"], c.unsqueeze(0).expand(B, -1, -1))
    u = model.subnetworks(model.embedding(sparse, dense))  # [3, B, 5]
    assert u.shape == (3, B, 5)
    first = model.upper_subnetworks.linears[0]
    upper = []
    for j in range(2):
        v = sum(
            z[j, i] * (u[i] @ low.transform[j, i] if connection == "trans" else u[i])
            for i in range(3)
        )
        upper.append(torch.relu(v @ first.weight[j] + first.bias[j]))  # [B, 4]
    head = model.towers.linears[0]
    for t, name in enumerate(["ctr", "cvr"]):
        s = sum(
            c[t, j] * (upper[j] @ task.transform[t, j] if connection == "trans" else upper[j])
            for j in range(2)
        )
        want = (s @ head.weight[t] + head.bias[t]).squeeze(-1)
        torch.testing.assert_close(out[name], want, rtol=1e-5, atol=1e-6)
    l0 = model.extra_loss(out, torch.zeros(B, 2))
    # every code of both routings: 6 + 4 connections, each sigmoid(2 - 2/3 log(0.1/1.1))
    one = 1 / (1 + math.exp(-(2.0 - 2 / 3 * math.log(0.1 / 1.1))))
    assert l0.item() == pytest.approx(0.001 * 10 * one, rel=1e-6)
    torch.testing.assert_close(
        l0,
        0.001
        * (
            expected_l0(low.log_alpha, 2 / 3, -0.1, 1.1).sum()
            + expected_l0(task.log_alpha, 2 / 3, -0.1, 1.1).sum()
        ),
    )
    model.train()
    torch.manual_seed(5)
    sampled = model(sparse, dense)["gates"][0]
    assert not torch.equal(sampled, c) and ((sampled >= 0) & (sampled <= 1)).all()


@pytest.mark.parametrize(
    ("cfg", "message"),
    [
        (
            {"name": "escm2", "regularizer": "snips"},
            "model.regularizer 'snips' is unknown; use one of ['ips', 'dr']",
        ),
        (
            {"name": "escm2", "propensity_clip": 0.0},
            "model.propensity_clip must be in (0, 1] (the floor of pCTR used as the click "
            "propensity), got 0.0",
        ),
        (
            {"name": "escm2", "chain": ["click", "conversion"]},
            "model=escm2 works on the click -> conversion funnel only; model.chain must be null, "
            "got ['click', 'conversion']",
        ),
        (
            {"name": "snr", "connection": "max"},
            "model.connection 'max' is unknown; use one of ['trans', 'aver']",
        ),
        (
            {"name": "snr", "gamma": 0.1},
            "model.gamma must be < 0 and model.zeta > 1 (the stretch interval around [0, 1]), "
            "got gamma=0.1, zeta=1.1",
        ),
        (
            {"name": "shared_bottom", "backbone": "din"},
            "model.backbone 'din' is unknown; use one of ['mlp', 'deepfm', 'dcn']",
        ),
        (
            {"name": "esmm", "backbone": "dcn", "cross_layers": 0},
            "model.cross_layers must be an integer >= 1, got 0",
        ),
        ({"name": "snr", "l0_weight": "big"}, "model.l0_weight='big': expected a number"),
    ],
)
def test_zoo_config_errors_are_one_exact_line(cfg, message):
    with pytest.raises(MtlrecError) as err:
        build(**cfg)
    assert str(err.value) == message


@pytest.mark.parametrize("name", ["esmm", "mmoe", "shared_bottom", "single_task"])
def test_default_backbone_adds_no_parameters_so_old_checkpoints_load(name):
    model, _ = build(name=name)
    assert not [k for k in model.state_dict() if k.startswith("interaction.")]
