"""Whole-split metrics: values equal sklearn's, sample spaces respected, names as documented."""

import math

import numpy as np
import pytest
from sklearn.metrics import log_loss, roc_auc_score

from mtlrec.data.spec import DatasetSpec, FeatureSpec, FunnelSpec, TaskSpec
from mtlrec.training.metrics import eval_targets, split_metrics

SPEC = DatasetSpec(
    "toy",
    (FeatureSpec("f", "sparse", 2),),
    ("click", "conversion", "conversion_if_clicked", "spend"),
    (TaskSpec("ctr", "click"), TaskSpec("cvr", "conversion", where="click")),
    funnel=FunnelSpec("click", "conversion", "conversion_if_clicked"),
)


def data(n=400, seed=0):
    rng = np.random.default_rng(seed)
    click = (rng.random(n) < 0.3).astype(np.float32)
    cic = (rng.random(n) < 0.4).astype(np.float32)
    labels = np.stack([click, click * cic, cic, rng.normal(size=n).astype(np.float32)], 1)
    preds = {
        "ctr": rng.random(n),
        "cvr": rng.random(n),
        "ctcvr": rng.random(n),
        "spend": rng.normal(size=n),
    }
    return labels, preds


def test_esmm_targets_follow_the_paper():
    loss_tasks = (TaskSpec("ctr", "click"), TaskSpec("ctcvr", "conversion"))
    targets = eval_targets(loss_tasks, {"ctr": "binary", "cvr": "binary", "ctcvr": "binary"}, SPEC)
    described = [(t.key("auc"), t.task.label, t.task.where) for t in targets]
    assert described == [
        ("ctr_auc", "click", None),
        ("ctcvr_auc", "conversion", None),
        ("cvr_auc", "conversion", "click"),
        ("cvr_auc_entire", "conversion_if_clicked", None),
    ]


def test_values_match_sklearn_on_each_sample_space():
    labels, preds = data()
    loss_tasks = (TaskSpec("ctr", "click"), TaskSpec("ctcvr", "conversion"))
    targets = eval_targets(loss_tasks, {"ctr": "binary", "cvr": "binary", "ctcvr": "binary"}, SPEC)
    m = split_metrics("test", preds, labels, targets, SPEC, loss_tasks)
    clicked = labels[:, 0] == 1
    assert m["test/ctr_auc"] == pytest.approx(roc_auc_score(labels[:, 0], preds["ctr"]), abs=1e-12)
    assert m["test/cvr_auc"] == pytest.approx(
        roc_auc_score(labels[clicked, 1], preds["cvr"][clicked]), abs=1e-12
    )
    assert m["test/cvr_auc_entire"] == pytest.approx(
        roc_auc_score(labels[:, 2], preds["cvr"]), abs=1e-12
    )
    assert m["test/ctcvr_logloss"] == pytest.approx(
        log_loss(labels[:, 1], preds["ctcvr"]), rel=1e-9
    )
    # the mean is over the DATASET's tasks (ctr, cvr on clicks), not ESMM's extra ctcvr output
    assert m["test/mean_auc"] == pytest.approx((m["test/ctr_auc"] + m["test/cvr_auc"]) / 2)


def test_mean_metrics_average_the_same_dataset_tasks_for_every_model():
    """ESMM trains ctr + ctcvr, MMoE ctr + cvr: on the same predictions both means are equal."""
    labels, preds = data()
    outputs = {"ctr": "binary", "cvr": "binary", "ctcvr": "binary"}
    esmm_tasks = (TaskSpec("ctr", "click"), TaskSpec("ctcvr", "conversion"))
    esmm = split_metrics(
        "val", preds, labels, eval_targets(esmm_tasks, outputs, SPEC), SPEC, esmm_tasks
    )
    mmoe_tasks = SPEC.tasks
    mmoe = split_metrics(
        "val", preds, labels, eval_targets(mmoe_tasks, outputs, SPEC), SPEC, mmoe_tasks
    )
    for metric in ("auc", "logloss"):
        assert esmm[f"val/mean_{metric}"] == mmoe[f"val/mean_{metric}"]
        assert esmm[f"val/mean_{metric}"] == pytest.approx(
            (esmm[f"val/ctr_{metric}"] + esmm[f"val/cvr_{metric}"]) / 2, rel=1e-12
        )
    assert "val/ctcvr_auc" in esmm  # the model's extra keeps its own column


def test_regression_metrics():
    labels, preds = data()
    task = TaskSpec("spend", "spend", "regression")
    m = split_metrics(
        "val",
        preds,
        labels,
        eval_targets((task,), {"spend": "regression"}, SPEC, dataset_tasks=(task,)),
        SPEC,
        (task,),
    )
    err = preds["spend"] - labels[:, 3]
    assert m["val/spend_mse"] == pytest.approx(np.mean(err**2))
    assert m["val/spend_mae"] == pytest.approx(np.mean(np.abs(err)))
    assert m["val/spend_rmse"] == pytest.approx(np.sqrt(np.mean(err**2)))
    assert m["val/mean_rmse"] == m["val/spend_rmse"]
    assert m["val/mean_mse"] == m["val/spend_mse"]
    assert "val/mean_auc" not in m


def test_auc_is_nan_not_an_error_when_a_split_has_one_class():
    labels, preds = data()
    labels[:, 1] = 0  # no conversions at all
    task = TaskSpec("cvr", "conversion", where="click")
    m = split_metrics(
        "val",
        preds,
        labels,
        [t for t in eval_targets((task,), {"cvr": "binary"}, SPEC)],
        SPEC,
        (task,),
    )
    assert math.isnan(m["val/cvr_auc"]) and math.isnan(m["val/mean_auc"])
    assert math.isfinite(m["val/cvr_logloss"])


def test_docs_metrics_table_matches_the_registry():
    from pathlib import Path

    from mtlrec.metric_registry import METRICS, docs_table

    doc = (Path(__file__).resolve().parents[2] / "docs" / "metrics.md").read_text()
    assert docs_table() in doc
    for name, metric in METRICS.items():
        word = "higher" if metric.direction == "max" else "lower"
        assert f"| `{name}` | {word} is better | {metric.definition} |" in doc


def test_auc_equals_sklearn_with_ties_and_without():
    from sklearn.metrics import roc_auc_score

    from mtlrec.training.metrics import auc

    rng = np.random.default_rng(4)
    for scores in (rng.random(5000), np.round(rng.random(5000), 2), rng.integers(0, 3, 5000)):
        y = (rng.random(5000) < 0.07).astype(np.float64)
        assert auc(y, scores.astype(np.float64)) == pytest.approx(
            roc_auc_score(y, scores), abs=1e-12
        )
    assert auc(np.array([0.0, 1.0]), np.array([0.3, 0.3])) == 0.5  # one tie: half a pair
