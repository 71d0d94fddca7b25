"""OMoE and PLE: shapes, the routing of every gate, tower sizes, gate statistics."""

from __future__ import annotations

import math

import pytest
import torch

from mtlrec.data.spec import DatasetSpec, FeatureSpec, TaskSpec
from mtlrec.errors import MtlrecError
from mtlrec.models import build_model
from mtlrec.models.layers import gate_statistics
from mtlrec.models.ple import PLE, ExtractionLevel

SPEC = DatasetSpec(
    name="toy",
    features=(
        FeatureSpec("a", "sparse", 10),
        FeatureSpec("b", "sparse", 5),
        FeatureSpec("d", "dense"),
    ),
    labels=("y1", "y2", "y3"),
    tasks=(TaskSpec("t1", "y1"), TaskSpec("t2", "y2"), TaskSpec("t3", "y3", "regression")),
)
B = 6


def inputs(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    sparse = torch.stack(
        [torch.randint(0, 10, (B,), generator=g), 10 + torch.randint(0, 5, (B,), generator=g)], 1
    )
    return sparse, torch.randn(B, 1, generator=g)


def build(**cfg):
    torch.manual_seed(0)
    model, _ = build_model(cfg, SPEC, SPEC.tasks)
    return model


def test_omoe_one_gate_for_all_tasks():
    model = build(name="omoe", num_experts=3, expert_dims=[8, 4], tower_dims=[5])
    out = model(*inputs())
    assert set(out) == {"t1", "t2", "t3", "gates"}
    assert all(out[t].shape == (B,) for t in ("t1", "t2", "t3"))
    g = out["gates"]
    assert g.shape == (B, 3, 3)
    assert torch.equal(g[:, 0], g[:, 1]) and torch.equal(g[:, 0], g[:, 2])  # one gate
    assert torch.allclose(g.sum(-1), torch.ones(B, 3))
    # the gate is a single linear layer to 3 experts: [in, 1 * 3]
    assert model.moe.gates.linears[0].weight.shape == (3, model.embedding.out_dim)


def test_ple_routing_table_and_gate_sizes():
    # T = 3 tasks, S = 2 specific experts each, Sh = 1 shared: experts 0-1 task 1, 2-3 task 2,
    # 4-5 task 3, 6 shared.
    model = build(
        name="ple",
        num_levels=2,
        num_shared_experts=1,
        num_specific_experts=2,
        expert_dims=[8, 4],
        tower_dims=[5],
    )
    assert isinstance(model, PLE)
    first, last = model.extractor.levels
    assert first.task_experts.tolist() == [[0, 1, 6], [2, 3, 6], [4, 5, 6]]
    assert last.task_experts.tolist() == [[0, 1, 6], [2, 3, 6], [4, 5, 6]]
    assert first.expert_input.tolist() == [0, 0, 1, 1, 2, 2, 3]  # task inputs, then shared (3)
    # task gates: S + Sh = 3 outputs each; shared gate (first level only): all 7 experts
    in_dim = model.embedding.out_dim
    assert first.task_gates.linears[0].weight.shape == (3 * 3, in_dim)
    assert first.shared_gate.weight.shape == (7, in_dim)
    assert last.shared_gate is None  # nothing reads a shared output after the last level
    assert last.task_gates.linears[0].weight.shape == (3, 4, 3)  # grouped [T, in=4, S+Sh]
    # experts: level 1 read the embedding, level 2 read 4-dim level-1 outputs
    assert first.experts.linears[0].weight.shape == (7 * 8, in_dim)
    assert last.experts.linears[0].weight.shape == (7, 4, 8)
    # towers: one per task, reading expert_dims[-1] = 4, hidden 5, one output
    assert [tuple(lin.weight.shape) for lin in model.towers.linears] == [(3, 4, 5), (3, 5, 1)]
    out = model(*inputs())
    g = out["gates"]
    assert g.shape == (B, 3, 7)
    assert torch.allclose(g.sum(-1), torch.ones(B, 3))
    visible = torch.zeros(3, 7, dtype=torch.bool)
    for k, row in enumerate(last.task_experts.tolist()):
        visible[k, row] = True
    assert torch.all(g[:, ~visible] == 0)  # a task never weighs another task's experts
    assert torch.all(g[:, visible] > 0)


def test_ple_task_output_depends_only_on_visible_experts():
    """Perturbing task 2's own experts changes task 2 (and, through the shared gate, later levels)
    but never task 1 in a one-level model (CGC)."""
    model = build(
        name="ple", num_levels=1, num_shared_experts=1, num_specific_experts=1, expert_dims=[4]
    )
    assert model.extractor.levels[0].shared_gate is None  # CGC: no shared gate at all
    x = inputs()
    before = model(*x)
    with torch.no_grad():
        # expert 1 is task t2's own expert: its slice of the first expert layer
        model.extractor.levels[0].experts.linears[0].weight[4:8] += 1.0
    after = model(*x)
    assert torch.equal(before["t1"], after["t1"]) and torch.equal(before["t3"], after["t3"])
    assert not torch.equal(before["t2"], after["t2"])


def test_ple_two_levels_share_through_the_shared_gate():
    model = build(
        name="ple",
        num_levels=2,
        num_shared_experts=1,
        num_specific_experts=1,
        expert_dims=[4],
        activation="tanh",  # no dead ReLU units hiding a dependence
    )
    x = inputs()
    before = model(*x)
    with torch.no_grad():
        model.extractor.levels[0].experts.linears[0].weight[4:8] += 1.0  # task t2's level-1 expert
    after = model(*x)
    # level 2's shared expert reads the shared gate's mixture of ALL level-1 experts
    assert not torch.equal(before["t1"], after["t1"])


def test_extraction_level_without_specific_or_shared_experts():
    lvl = ExtractionLevel(
        5,
        2,
        0,
        1,
        [3],
        shared_gate=False,
        first=True,
        activation="relu",
        dropout=0.0,
        batch_norm=False,
    )
    assert lvl.task_experts.tolist() == [[0], [1]]
    lvl = ExtractionLevel(
        5,
        2,
        2,
        0,
        [3],
        shared_gate=True,
        first=True,
        activation="relu",
        dropout=0.0,
        batch_norm=False,
    )
    assert lvl.task_experts.tolist() == [[0, 1], [0, 1]]


def test_ple_config_errors():
    with pytest.raises(MtlrecError) as e:
        build(name="ple", num_shared_experts=0, num_specific_experts=0)
    assert "num_shared_experts + model.num_specific_experts must be >= 1" in str(e.value)
    with pytest.raises(MtlrecError, match=r"model.num_levels must be an integer >= 1, got 0"):
        build(name="ple", num_levels=0)


def test_gate_statistics():
    stats = gate_statistics([[0.5, 0.5, 0.0], [1.0, 0.0, 0.0]], ["a", "b"])
    assert math.isclose(stats["gate/entropy/a"], math.log(2))
    assert stats["gate/entropy/b"] == 0.0  # collapsed onto expert 0
    assert stats["gate/utilization/expert_0"] == 0.75
    assert stats["gate/utilization/expert_1"] == 0.25
    assert stats["gate/utilization/expert_2"] == 0.0


@pytest.mark.parametrize("model", ["omoe", "ple"])
def test_moe_models_train_and_log_gates(train_tiny, model):
    run_dir, metrics = train_tiny([f"model={model}", "trainer.epochs=1"])
    assert metrics["status"] == "completed"
    import pandas as pd

    h = pd.read_csv(run_dir / "history.csv")
    e = 8 if model == "omoe" else 2 * 2 + 2
    assert [c for c in h.columns if c.startswith("gate/utilization/")] == [
        f"gate/utilization/expert_{i}" for i in range(e)
    ]
    assert math.isclose(h.filter(like="gate/utilization/").iloc[0].sum(), 1.0, rel_tol=1e-5)
    assert 0 < h["gate/entropy/ctr"].iloc[0] <= math.log(e) + 1e-9
    assert "test/ctr_auc" in metrics["metrics"] and 0.4 < metrics["metrics"]["test/ctr_auc"] <= 1
