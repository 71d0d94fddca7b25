"""ESM² (model=esm2): the path sum and its losses by hand, the funnel.action contract, and training
through `mtlrec train` (CLI), under every balancer, exact resume and TorchScript export."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
import torch

from conftest import TINY, TINY_ROWS, compose_train, run_training
from helpers.cli import mtlrec
from helpers.stops import stop_then_resume
from mtlrec.data.spec import DatasetSpec, FeatureSpec, FunnelSpec, TaskSpec
from mtlrec.errors import MtlrecError
from mtlrec.models import build_model
from mtlrec.models.esm2 import Esm2, decompose, path_sum_logit
from mtlrec.training.balance import BALANCERS
from mtlrec.training.objective import Objective

SPEC = DatasetSpec(
    name="toy",
    features=(FeatureSpec("user", "sparse", 7), FeatureSpec("price", "dense")),
    labels=("click", "purchase", "cart"),
    tasks=(TaskSpec("ctr", "click"), TaskSpec("cvr", "purchase", where="click")),
    funnel=FunnelSpec("click", "purchase", action="cart"),
)
BASE = [o for o in TINY if not o.startswith("dataset.")]  # the preset sets its own dataset keys
ESM2 = ["dataset=synthetic_ccp_action", f"dataset.num_rows={TINY_ROWS}", "model=esm2"]
ESM2 += ["model.embedding_dim=4"]


def logit(p: float) -> torch.Tensor:
    return torch.tensor(math.log(p / (1 - p)), dtype=torch.float64)


def towers(rows: list[tuple[float, float, float, float]]) -> dict[str, torch.Tensor]:
    """Tower logits from probabilities (pCTR, pAVR, p(buy|D), p(buy|O)) per row."""
    names = ("ctr", "avr", "cvr_given_action", "cvr_given_other")
    return {n: torch.stack([logit(r[k]) for r in rows]) for k, n in enumerate(names)}


def test_path_sum_and_products_by_hand():
    out = decompose(towers([(0.2, 0.25, 0.8, 0.1), (0.5, 0.9, 0.5, 0.0001)]))
    p = {k: torch.sigmoid(v) for k, v in out.items()}
    # row 0: pCVR = 0.25 * 0.8 + 0.75 * 0.1 = 0.275; pCTAVR = 0.2 * 0.25; pCTCVR = 0.2 * 0.275
    # row 1: pCVR = 0.9 * 0.5 + 0.1 * 0.0001 = 0.45001
    torch.testing.assert_close(p["cvr"], torch.tensor([0.275, 0.45001], dtype=torch.float64))
    torch.testing.assert_close(p["ctavr"], torch.tensor([0.05, 0.45], dtype=torch.float64))
    torch.testing.assert_close(p["ctcvr"], torch.tensor([0.055, 0.225005], dtype=torch.float64))


def test_path_sum_is_finite_with_finite_gradients_for_confident_towers():
    a = torch.tensor([-60.0, 60.0, 60.0], requires_grad=True)
    b = torch.tensor([0.0, 60.0, -60.0], requires_grad=True)
    c = torch.tensor([0.0, 60.0, 60.0], requires_grad=True)
    z = path_sum_logit(a, b, c)
    z.sum().backward()
    assert torch.isfinite(z).all() and all(torch.isfinite(t.grad).all() for t in (a, b, c))
    # row 0: p = s(-60) s(0) + s(60) s(0) ~ 1/2 -> logit 0
    # row 1: 1 - p = s(60) s(-60) + s(-60) s(-60) ~ e^-60 -> logit 60
    # row 2: p = s(60) s(-60) + s(-60) s(60) ~ 2 e^-60 -> logit -60 + log 2 (no underflow to -inf)
    torch.testing.assert_close(
        z.detach(), torch.tensor([0.0, 60.0, -60.0 + math.log(2)]), atol=1e-5, rtol=0
    )


def test_losses_are_ctr_ctavr_ctcvr_over_all_impressions_by_hand():
    model, tasks = build_model(
        {"name": "esm2", "embedding_dim": 4, "ctavr_weight": 0.5}, SPEC, SPEC.tasks
    )
    assert isinstance(model, Esm2)
    assert [(t.name, t.label, t.where, t.weight) for t in tasks] == [
        ("ctr", "click", None, 1.0),
        ("ctavr", "cart", None, 0.5),
        ("ctcvr", "purchase", None, 1.0),
    ]
    # 4 impressions: not clicked; clicked only; clicked + cart; clicked + cart + purchase
    out = decompose({k: v.float() for k, v in towers([(0.2, 0.25, 0.8, 0.1)] * 4).items()})
    labels = torch.tensor([[0, 0, 0], [1, 0, 0], [1, 0, 1], [1, 1, 1]], dtype=torch.float32)
    total, sums, counts = Objective(tasks, SPEC)(out, labels)

    def bce(p, ys):
        return sum(-math.log(p) if y else -math.log(1 - p) for y in ys) / len(ys)

    want = [bce(0.2, [0, 1, 1, 1]), bce(0.05, [0, 0, 1, 1]), bce(0.055, [0, 0, 0, 1])]
    torch.testing.assert_close(sums / counts, torch.tensor(want), rtol=1e-5, atol=0)
    assert counts.tolist() == [4.0, 4.0, 4.0]
    assert total.item() == pytest.approx(want[0] + 0.5 * want[1] + want[2], rel=1e-5)


def test_without_funnel_action_one_line_names_the_key(tmp_path):
    with pytest.raises(MtlrecError) as info:
        run_training(tmp_path, ["model=esm2", "trainer.epochs=1"])
    assert str(info.value) == (
        "model=esm2 needs a D-action label (cart or wish) in the funnel, but dataset "
        "'synthetic_ccp' declares no funnel.action; set funnel.action to that label column "
        "(on synthetic_ccp: dataset=synthetic_ccp_action has one)"
    )


def test_trains_through_the_cli_and_scores_cvr_like_esmm(tmp_path):
    run_dir = tmp_path / "run"
    done = mtlrec(
        "train", *BASE, *ESM2, "trainer.epochs=1", f"hydra.run.dir={run_dir}", cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr[-2000:]
    m = json.loads((run_dir / "metrics.json").read_text())["metrics"]
    for key in ("ctr_auc", "ctavr_auc", "ctcvr_auc", "cvr_auc", "cvr_auc_entire"):
        assert 0.0 <= m[f"test/{key}"] <= 1.0, key
    h = pd.read_csv(run_dir / "history.csv")
    assert [c for c in h.columns if c.startswith("train/") and c.endswith("_loss")] == [
        "train/ctr_loss",
        "train/ctavr_loss",
        "train/ctcvr_loss",
    ]


@pytest.mark.parametrize("balance", sorted(BALANCERS))
def test_trains_under_every_balancer(tmp_path, balance):
    """Its towers share the embedding (and pCTR / pAVR feed several losses): every balancer."""
    run_dir, metrics = run_training(tmp_path, [*ESM2, "trainer.epochs=1", f"balance={balance}"])
    assert metrics["status"] == "completed"
    h = pd.read_csv(run_dir / "history.csv")
    weights = h.filter(like="weight/")
    assert list(weights.columns) == ["weight/ctr", "weight/ctavr", "weight/ctcvr"]
    if balance == "gradnorm":
        assert math.isclose(weights.iloc[0].sum(), 3.0, rel_tol=1e-4)  # renormalised to T = 3
    if balance == "pcgrad":
        assert 0.0 <= h["pcgrad/conflict_rate"].iloc[0] <= 1.0
    if balance == "fixed":
        assert weights.iloc[0].tolist() == [1.0, 1.0, 1.0]


def test_interrupted_and_resumed_equals_uninterrupted(tmp_path, monkeypatch):
    from mtlrec.experiment import run

    overrides = [*BASE, *ESM2, "trainer.batch_size=128"]
    straight_dir, straight = run_training(tmp_path, overrides[len(BASE) :], name="straight")
    run_dir = tmp_path / "resumed"
    resumed = compose_train([*overrides, f"resume={run_dir}"])
    # poll 30: epoch 2 step 8 of 21 (see test_zoo_training.py)
    stop = stop_then_resume(monkeypatch, run, compose_train(overrides), resumed, run_dir, k=30)
    assert "training stopped after epoch 2 step 8/21" in str(stop)
    got = json.loads((run_dir / "metrics.json").read_text())
    assert got["status"] == "completed" and got["metrics"] == straight["metrics"]
    a = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=False)["model_state"]
    b = torch.load(straight_dir / "checkpoints" / "last.pt", weights_only=False)["model_state"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_exports_to_torchscript(tmp_path):
    from mtlrec.inference import export

    run_dir, _ = run_training(tmp_path, [*ESM2, "trainer.epochs=1"])
    result = export(run_dir, "torchscript", tmp_path / "ts", sample_rows=64)
    assert result["max_abs_diff"] <= 1e-5
    assert {"ctr", "cvr", "ctavr", "ctcvr"} <= set(result["outputs"])
