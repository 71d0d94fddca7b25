"""Model semantics: ESMM's product, MMoE's gates, grouped layers, single-task independence, shapes."""

import pytest
import torch

from mtlrec.data.spec import DatasetSpec, FeatureSpec, FunnelSpec, TaskSpec
from mtlrec.errors import MtlrecError
from mtlrec.models import MODELS, build_model
from mtlrec.models.base import MultiTaskModel
from mtlrec.models.esmm import product_logit
from mtlrec.models.layers import FeatureEmbedding, GroupedMLP

SPEC = DatasetSpec(
    name="toy",
    features=(
        FeatureSpec("user", "sparse", 7),
        FeatureSpec("item", "sparse", 5),
        FeatureSpec("price", "dense"),
        FeatureSpec("age", "dense"),
    ),
    labels=("click", "conversion", "spend"),
    tasks=(
        TaskSpec("ctr", "click"),
        TaskSpec("cvr", "conversion", where="click"),
        TaskSpec("spend", "spend", "regression"),
    ),
    funnel=FunnelSpec("click", "conversion"),
)


def batch(n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    user = torch.randint(0, 7, (n, 1), generator=g)
    item = torch.randint(0, 5, (n, 1), generator=g) + 7  # offset of the second field
    return torch.cat([user, item], 1), torch.randn(n, 2, generator=g)


def build(model_cfg, tasks=SPEC.tasks):
    torch.manual_seed(0)
    return build_model({"embedding_dim": 4, **model_cfg}, SPEC, tasks)


def test_product_logit_is_the_product_of_probabilities_even_at_extremes():
    a = torch.tensor([-40.0, -10.0, -1.0, 0.0, 2.0, 15.0, 40.0, 90.0])
    a, b = torch.meshgrid(a, a, indexing="ij")
    p = torch.sigmoid(product_logit(a.double(), b.double()))
    expected = torch.sigmoid(a.double()) * torch.sigmoid(b.double())
    torch.testing.assert_close(p, expected, rtol=1e-6, atol=1e-300)
    # float32: finite everywhere, gradients too
    a32, b32 = a.clone().requires_grad_(), b.clone().requires_grad_()
    out = product_logit(a32, b32)
    out.sum().backward()
    assert (
        torch.isfinite(out).all()
        and torch.isfinite(a32.grad).all()
        and torch.isfinite(b32.grad).all()
    )


def test_esmm_outputs_and_ctcvr_equals_ctr_times_cvr():
    model, tasks = build({"name": "esmm", "tower_dims": [8, 4]})
    assert [(t.name, t.label, t.where) for t in tasks] == [
        ("ctr", "click", None),
        ("ctcvr", "conversion", None),
    ]
    out = model(*batch())
    assert set(out) == {"ctr", "cvr", "ctcvr"} and all(v.shape == (6,) for v in out.values())
    torch.testing.assert_close(
        torch.sigmoid(out["ctcvr"]),
        torch.sigmoid(out["ctr"]) * torch.sigmoid(out["cvr"]),
        rtol=1e-5,
        atol=1e-7,
    )


def test_esmm_towers_take_their_own_sizes():
    model, _ = build(
        {"name": "esmm", "tower_dims": [8], "ctr_tower_dims": [3], "cvr_tower_dims": [5, 2]}
    )
    linears = {
        k: [m.out_features for m in t.modules() if isinstance(m, torch.nn.Linear)]
        for k, t in model.towers.items()
    }
    assert linears == {"ctr": [3, 1], "cvr": [5, 2, 1]}


def test_cvr_base_trains_on_clicked_rows_only():
    model, tasks = build({"name": "cvr_base", "tower_dims": [8]})
    assert [(t.name, t.label, t.where) for t in tasks] == [("cvr", "conversion", "click")]
    assert set(model(*batch())) == {"cvr"}


def test_funnel_models_need_a_funnel():
    spec = DatasetSpec("nofunnel", SPEC.features, SPEC.labels, SPEC.tasks)
    with pytest.raises(
        MtlrecError, match="model=esmm needs a dataset with click and conversion labels"
    ):
        build_model({"name": "esmm"}, spec, spec.tasks)


def test_mmoe_gates_are_distributions_and_outputs_per_task():
    model, tasks = build(
        {"name": "mmoe", "num_experts": 3, "expert_dims": [8, 6], "tower_dims": [4]}
    )
    out = model(*batch(n=10))
    assert set(out) == {"ctr", "cvr", "spend", "gates"}
    assert out["gates"].shape == (10, 3, 3)
    torch.testing.assert_close(out["gates"].sum(-1), torch.ones(10, 3))
    assert (out["gates"] > 0).all()
    assert model.output_types == {"ctr": "binary", "cvr": "binary", "spend": "regression"}


def test_mmoe_gate_mlp_and_single_expert():
    model, _ = build({"name": "mmoe", "num_experts": 1, "expert_dims": [8], "gate_dims": [5]})
    out = model(*batch())
    torch.testing.assert_close(out["gates"], torch.ones(6, 3, 1))


def test_mmoe_matches_a_per_expert_loop():
    """The batched experts/gates/towers compute exactly what a Python loop over them would."""
    model, _ = build({"name": "mmoe", "num_experts": 4, "expert_dims": [8, 6], "tower_dims": [5]})
    sparse, dense = batch()
    out = model(sparse, dense)
    x = model.embedding(sparse, dense)
    first, second = model.experts.linears
    experts = []
    for e in range(4):
        h = torch.relu(x @ first.weight[e * 8 : (e + 1) * 8].T + first.bias[e * 8 : (e + 1) * 8])
        experts.append(torch.relu(h @ second.weight[e] + second.bias[e, 0]))
    gate_linear = model.gates.linears[0]
    for k, name in enumerate(["ctr", "cvr", "spend"]):
        g = torch.softmax(
            x @ gate_linear.weight[k * 4 : (k + 1) * 4].T + gate_linear.bias[k * 4 : (k + 1) * 4],
            -1,
        )
        mixed = sum(g[:, e : e + 1] * experts[e] for e in range(4))
        t1, t2 = model.towers.linears
        y = torch.relu(mixed @ t1.weight[k] + t1.bias[k, 0]) @ t2.weight[k] + t2.bias[k, 0]
        torch.testing.assert_close(out[name], y.squeeze(-1), rtol=1e-5, atol=1e-6)


def test_grouped_mlp_equals_independent_linears():
    torch.manual_seed(0)
    mlp = GroupedMLP(3, 4, [5], out_dim=2)
    x = torch.randn(3, 7, 4)
    y = mlp(x)
    assert y.shape == (3, 7, 2)
    for g in range(3):
        h = torch.relu(x[g] @ mlp.linears[0].weight[g] + mlp.linears[0].bias[g])
        torch.testing.assert_close(y[g], h @ mlp.linears[1].weight[g] + mlp.linears[1].bias[g])


# generic models train on the dataset's tasks: they keep MultiTaskModel.loss_tasks
GENERIC = sorted(
    n for n, cls in MODELS.items() if cls.loss_tasks.__func__ is MultiTaskModel.loss_tasks.__func__
)


def test_generic_models_come_from_the_registry():
    assert {"mmoe", "omoe", "ple", "shared_bottom", "single_task", "snr"} <= set(GENERIC)
    assert "esmm" not in GENERIC and "cvr_base" not in GENERIC


@pytest.mark.parametrize("name", GENERIC)
def test_generic_models_shapes(name):
    model, tasks = build({"name": name})
    out = model(*batch(n=5))
    for t in tasks:
        assert out[t.name].shape == (5,)


def test_single_task_networks_share_nothing():
    model, tasks = build({"name": "single_task", "bottom_dims": [6], "tower_dims": [3]})
    sparse, dense = batch()
    model(sparse, dense)["ctr"].sum().backward()
    # The gradient of task 0 reaches only task 0's slice of every parameter.
    emb_grad = model.embedding.tables[0].weight.grad.view(12, 3, 4)
    assert emb_grad[:, 0].abs().sum() > 0 and emb_grad[:, 1:].abs().sum() == 0
    for linear in model.nets.linears:
        assert linear.weight.grad[0].abs().sum() > 0 and linear.weight.grad[1:].abs().sum() == 0


def test_feature_embedding_mixed_sizes_map_ids_to_the_right_rows():
    spec = DatasetSpec(
        "mixed",
        (
            FeatureSpec("a", "sparse", 3, embedding_dim=2),
            FeatureSpec("b", "sparse", 4, embedding_dim=5),
            FeatureSpec("c", "sparse", 2, embedding_dim=2),
            FeatureSpec("d", "dense"),
        ),
        ("y",),
        (TaskSpec("y", "y"),),
    )
    emb = FeatureEmbedding(spec, embedding_dim=8)
    assert emb.out_dim == 2 + 5 + 2 + 1
    sparse = torch.tensor([[2, 3 + 1, 7 + 1]])  # a=2, b=1, c=1 in fused ids (offsets 0, 3, 7)
    out = emb(sparse, torch.tensor([[0.5]]))
    small, big = emb.tables  # dims 2 (fields a, c) and 5 (field b)
    torch.testing.assert_close(out[0, :2], small.weight[2])
    torch.testing.assert_close(out[0, 2:4], small.weight[3 + 1])  # c's rows follow a's 3 rows
    torch.testing.assert_close(out[0, 4:9], big.weight[1])
    assert out[0, 9] == 0.5


@pytest.mark.parametrize(
    ("cfg", "message"),
    [
        ({"name": "mmoe", "num_experts": 0}, "model.num_experts must be an integer >= 1, got 0"),
        (
            {"name": "mmoe", "expert_dims": []},
            "model.expert_dims must list at least one layer size",
        ),
        (
            {"name": "shared_bottom", "bottom_dims": [8, -2]},
            "model.bottom_dims must hold positive integers, got [8, -2]",
        ),
        (
            {"name": "esmm", "embedding_dim": 0},
            "model.embedding_dim must be an integer >= 1, got 0",
        ),
        ({"name": "esmm", "dropout": 1.5}, "model.dropout must be in [0, 1), got 1.5"),
        ({"name": "esmm", "activation": "swish2"}, "model.activation 'swish2' is unknown"),
        (
            {"name": "mmoe", "num_expert": 2},
            "model.num_expert is not a key of model (did you mean model.num_experts?)",
        ),
        (
            {"name": "foo"},
            f"model.name 'foo' is unknown; valid models: {sorted(MODELS)}",
        ),
    ],
)
def test_invalid_model_configs(cfg, message):
    with pytest.raises(MtlrecError) as err:
        build(cfg)
    assert message in str(err.value)
