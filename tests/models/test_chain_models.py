"""ESMM chains and backbones, AITM: outputs as products of conditionals, routing, errors, training."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from mtlrec.data.spec import DatasetSpec, FeatureSpec, FunnelSpec, TaskSpec
from mtlrec.errors import MtlrecError
from mtlrec.models import build_model
from mtlrec.models.aitm import AITM

FUNNEL = DatasetSpec(
    name="funnel",
    features=(FeatureSpec("a", "sparse", 10), FeatureSpec("d", "dense")),
    labels=("click", "conversion"),
    tasks=(TaskSpec("ctr", "click"),),
    funnel=FunnelSpec("click", "conversion"),
)
CHAIN3 = DatasetSpec(
    name="chain3",
    features=(
        FeatureSpec("a", "sparse", 10),
        FeatureSpec("b", "sparse", 7),
        FeatureSpec("d", "dense"),
    ),
    labels=("click", "cart", "purchase"),
    tasks=(TaskSpec("click", "click"), TaskSpec("cart", "cart"), TaskSpec("purchase", "purchase")),
    splits={s: f"{s}.parquet" for s in ("train", "val", "test")},
)
B = 5


def inputs(spec: DatasetSpec) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    cols = [
        off + torch.randint(0, f.vocab_size, (B,), generator=g)
        for off, f in zip(spec.field_offsets, spec.sparse, strict=True)
    ]
    return torch.stack(cols, 1), torch.randn(B, len(spec.dense), generator=g)


def build(spec, **cfg):
    torch.manual_seed(0)
    return build_model(cfg, spec, spec.tasks)


def test_esmm_default_funnel_is_unchanged():
    model, tasks = build(FUNNEL, name="esmm", tower_dims=[8])
    assert [(t.name, t.label, t.where, t.weight) for t in tasks] == [
        ("ctr", "click", None, 1.0),
        ("ctcvr", "conversion", None, 1.0),
    ]
    assert list(model.state_dict()) == [
        "embedding.tables.0.weight",
        "towers.ctr.0.0.weight",
        "towers.ctr.0.0.bias",
        "towers.ctr.1.weight",
        "towers.ctr.1.bias",
        "towers.cvr.0.0.weight",
        "towers.cvr.0.0.bias",
        "towers.cvr.1.weight",
        "towers.cvr.1.bias",
    ]
    out = model(*inputs(FUNNEL))
    assert list(out) == ["ctr", "cvr", "ctcvr"]
    assert torch.allclose(
        torch.sigmoid(out["ctcvr"]), torch.sigmoid(out["ctr"]) * torch.sigmoid(out["cvr"])
    )


def test_esmm_chain_of_three_is_a_product_of_conditionals():
    model, tasks = build(
        CHAIN3,
        name="esmm",
        tower_dims=[8],
        chain=["click", "cart", "purchase"],
        chain_weights=[1.0, 0.5, 2.0],
    )
    assert [(t.name, t.label, t.weight) for t in tasks] == [
        ("click", "click", 1.0),
        ("cart", "cart", 0.5),
        ("purchase", "purchase", 2.0),
    ]
    out = model(*inputs(CHAIN3))
    assert list(out) == ["click", "cart_given_click", "cart", "purchase_given_cart", "purchase"]
    s = {k: torch.sigmoid(v.double()) for k, v in out.items()}
    assert torch.equal(
        out["click"], model.towers["click"](model.embedding(*inputs(CHAIN3))).squeeze(-1)
    )
    assert torch.allclose(s["cart"], s["click"] * s["cart_given_click"])
    assert torch.allclose(
        s["purchase"], s["click"] * s["cart_given_click"] * s["purchase_given_cart"]
    )
    assert torch.all(s["purchase"] <= s["cart"]) and torch.all(s["cart"] <= s["click"])


@pytest.mark.parametrize("backbone", ["mmoe", "ple"])
def test_esmm_backbones(backbone):
    model, _ = build(
        CHAIN3,
        name="esmm",
        tower_dims=[6],
        chain=["click", "cart", "purchase"],
        backbone=backbone,
        num_experts=4,
        expert_dims=[5],
        num_levels=2,
        num_shared_experts=1,
        num_specific_experts=1,
    )
    out = model(*inputs(CHAIN3))
    experts = 4 if backbone == "mmoe" else 3 * 1 + 1
    assert out["gates"].shape == (B, 3, experts)
    assert torch.allclose(out["gates"].sum(-1), torch.ones(B, 3))
    # each step tower reads the backbone's 5-dim output, not the embedding
    assert model.towers["cart_given_click"][0][0].weight.shape == (6, 5)
    s = {k: torch.sigmoid(v) for k, v in out.items() if k != "gates"}
    assert torch.allclose(s["purchase"], s["cart"] * s["purchase_given_cart"], atol=1e-6)


def test_chain_errors():
    with pytest.raises(MtlrecError) as e:
        build(CHAIN3, name="esmm", chain=["click", "basket"])
    assert str(e.value) == (
        "model.chain: column(s) ['basket'] are not labels of dataset 'chain3'; "
        "its labels are ['click', 'cart', 'purchase']"
    )
    with pytest.raises(MtlrecError, match=r"model.chain_weights must hold 3 numbers >= 0"):
        build(CHAIN3, name="esmm", chain=["click", "cart", "purchase"], chain_weights=[1.0])
    with pytest.raises(MtlrecError, match=r"model.chain must list two or more label columns"):
        build(CHAIN3, name="aitm", chain=["click"])
    with pytest.raises(MtlrecError, match=r"model.backbone 'moe' is unknown"):
        build(FUNNEL, name="esmm", backbone="moe")
    with pytest.raises(MtlrecError, match="model=aitm needs a dataset with click and conversion"):
        build(CHAIN3, name="aitm")


def test_aitm_transfer_and_calibrator():
    model, tasks = build(
        CHAIN3,
        name="aitm",
        tower_dims=[8],
        attention_dim=4,
        chain=["click", "cart", "purchase"],
        calibrator_weight=0.5,
    )
    assert isinstance(model, AITM) and [t.name for t in tasks] == ["click", "cart", "purchase"]
    out = model(*inputs(CHAIN3))
    assert list(out) == ["click", "cart", "purchase"]
    # attention weights over (p_t-1, q_t) sum to 1 per row
    q = torch.randn(B, 8)
    z, w = model.transfer[0](torch.randn(B, 8), q)
    assert z.shape == (B, 8) and torch.allclose(w.sum(1), torch.ones(B))
    # calibrator: 0.5 * mean_x [max(p2 - p1, 0) + max(p3 - p2, 0)], hand-computed
    logit = lambda p: torch.log(torch.tensor(p) / (1 - torch.tensor(p)))  # noqa: E731
    fake = {"click": logit([0.5, 0.2]), "cart": logit([0.6, 0.1]), "purchase": logit([0.3, 0.4])}
    # row 1: (0.1 + 0) ; row 2: (0 + 0.3)  -> mean 0.2, * 0.5 = 0.1
    assert math.isclose(float(model.extra_loss(fake, None)), 0.1, rel_tol=1e-5)
    model.calibrator_weight = 0.0
    assert model.extra_loss(fake, None) is None


def write_chain3(directory, rows: int = 3000) -> None:
    """A 3-step funnel (click -> cart -> purchase) with a signal in each field."""
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 10, rows), rng.integers(0, 7, rows)
    d = rng.normal(size=rows).astype(np.float32)
    sig = lambda x: 1 / (1 + np.exp(-x))  # noqa: E731
    click = rng.random(rows) < sig(-1 + 0.3 * (a - 5) + d)
    cart = click & (rng.random(rows) < sig(0.4 * (b - 3)))
    purchase = cart & (rng.random(rows) < sig(-0.5 + 0.5 * d))
    df = pd.DataFrame(
        {"a": a, "b": b, "d": d, "click": click, "cart": cart, "purchase": purchase}
    ).astype({"click": "float32", "cart": "float32", "purchase": "float32"})
    directory.mkdir(parents=True, exist_ok=True)
    cut = [0, int(rows * 0.7), int(rows * 0.85), rows]
    for i, split in enumerate(("train", "val", "test")):
        part = df.iloc[cut[i] : cut[i + 1]].reset_index(drop=True)
        pq.write_table(
            pa.Table.from_pandas(part, preserve_index=False), directory / f"{split}.parquet"
        )
    CHAIN3.save(directory)


def test_esmm_chain_with_ple_backbone_trains_with_uncertainty_weighting(train_tiny, tmp_path):
    data = tmp_path / "chain3"
    write_chain3(data)
    run_dir, metrics = train_tiny(
        [
            "dataset=prepared",
            f"dataset.path={data}",
            "model=esmm",
            "model.chain=[click,cart,purchase]",
            "model.backbone=ple",
            "model.expert_dims=[16]",
            "model.tower_dims=[8]",
            "balance=uncertainty",
        ]
    )
    assert metrics["status"] == "completed"
    for task in ("click", "cart", "purchase"):
        assert 0.5 < metrics["metrics"][f"test/{task}_auc"] <= 1.0
    h = pd.read_csv(run_dir / "history.csv")
    assert {"weight/click", "weight/cart", "weight/purchase", "log_var/purchase"} <= set(h.columns)
    # PLE backbone defaults: 1 expert per step + 2 shared = 5 experts; purchase sees 2, 3 and 4
    assert "gate/entropy/purchase" in h.columns and "gate/utilization/expert_5" not in h.columns
    assert h["gate/purchase/expert_0"].iloc[-1] == 0.0 and h["gate/purchase/expert_2"].iloc[-1] > 0
    # the learned log-variances moved from 0 and are stored with the run
    assert h["log_var/purchase"].iloc[-1] != 0.0


def test_aitm_cli_subprocess_logs_calibrator_and_weights(tmp_path):
    out = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "mtlrec",
        "train",
        "model=aitm",
        "model.tower_dims=[16]",
        "balance=gradnorm",
        "dataset.num_rows=4000",
        "trainer.epochs=1",
        "trainer.batch_size=256",
        "trainer.num_threads=1",
        "device=cpu",
        f"hydra.run.dir={out}",
    ]
    # the session's test data dir (conftest sets MTLREC_DATA_DIR): the tiny data is reused
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr[-2000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["status"] == "completed" and "test/ctcvr_auc" in metrics["metrics"]
    h = pd.read_csv(out / "history.csv")
    assert h["train/extra_loss"].iloc[0] >= 0
    assert math.isclose(h["weight/ctr"].iloc[0] + h["weight/ctcvr"].iloc[0], 2.0, rel_tol=1e-5)
