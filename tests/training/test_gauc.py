"""GAUC: impression-weighted mean of per-group AUCs, opt-in by metrics.gauc_by."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from mtlrec.errors import MtlrecError
from mtlrec.training.metrics import gauc


def reference(y, p, g):
    num = den = 0.0
    used = skipped = 0
    for k in np.unique(g):
        m = g == k
        if y[m].min() == y[m].max():
            skipped += 1
            continue
        num += roc_auc_score(y[m], p[m]) * m.sum()
        den += m.sum()
        used += 1
    return num / den, used, skipped


def test_gauc_equals_the_per_group_loop_with_ties_and_one_class_groups():
    rng = np.random.default_rng(0)
    g = rng.integers(0, 200, 3000)
    y = (rng.random(3000) < 0.2).astype(np.float64)
    p = np.round(rng.random(3000), 2)  # many tied scores
    value, used, skipped = gauc(y, p, g)
    want, want_used, want_skipped = reference(y, p, g)
    assert value == pytest.approx(want, abs=1e-12)
    assert (used, skipped) == (want_used, want_skipped) and skipped > 0


def test_gauc_by_hand():
    # user 0: scores rank its positive above 1 of 2 negatives -> AUC 0.5, 3 rows;
    # user 1: perfect -> 1.0, 2 rows; user 2: one class -> skipped
    y = np.array([1, 0, 0, 1, 0, 1.0])
    p = np.array([0.5, 0.9, 0.1, 0.8, 0.2, 0.3])
    g = np.array([0, 0, 0, 1, 1, 2])
    assert gauc(y, p, g) == (pytest.approx((0.5 * 3 + 1.0 * 2) / 5), 2, 1)
    assert np.isnan(gauc(np.array([1.0]), np.array([0.5]), np.array([0]))[0])


def test_a_run_reports_gauc_per_task_and_can_monitor_it(train_tiny):
    _, metrics = train_tiny(["metrics.gauc_by=user_id", "trainer.monitor=val/ctr_gauc"])
    m = metrics["metrics"]
    for key in ("val/ctr_gauc", "test/ctr_gauc", "test/ctcvr_gauc", "test/mean_gauc"):
        assert key in m and (m[key] is None or 0.0 <= m[key] <= 1.0), key
    assert metrics["monitor"] == "val/ctr_gauc" and metrics["monitor_mode"] == "max"
    _, plain = train_tiny(name="plain")
    assert not any("gauc" in k for k in plain["metrics"])
    # GAUC is an extra column: every other metric is the same with or without it
    shared = {k: v for k, v in m.items() if "gauc" not in k}
    assert shared.keys() == plain["metrics"].keys()


def test_gauc_by_a_field_the_data_does_not_have_is_one_line(train_tiny):
    with pytest.raises(MtlrecError) as e:
        train_tiny(["metrics.gauc_by=nobody"])
    assert str(e.value).startswith(
        "metrics.gauc_by='nobody': not a single-id field of dataset 'synthetic_ccp'; use one of "
        "['user_id', "
    )


def test_an_undefined_auc_is_null_with_a_warning_naming_task_split_and_why(caplog):
    import logging

    from mtlrec.data.spec import DatasetSpec, FeatureSpec, TaskSpec
    from mtlrec.training.metrics import EvalTarget, split_metrics

    spec = DatasetSpec(
        name="toy",
        features=(FeatureSpec("f", "sparse", 3),),
        labels=("click", "buy"),
        tasks=(TaskSpec("ctr", "click"), TaskSpec("cvr", "buy", where="click")),
    )
    targets = [EvalTarget(t) for t in spec.tasks]
    labels = np.array([[0, 0], [0, 0], [0, 0]], dtype=np.float32)  # no click at all
    predictions = {"ctr": np.array([0.1, 0.2, 0.3]), "cvr": np.array([0.5, 0.5, 0.5])}
    with caplog.at_level(logging.WARNING, logger="mtlrec.training.metrics"):
        undefined: dict[str, str] = {}
        out = split_metrics("val", predictions, labels, targets, spec, spec.tasks, None, undefined)
    assert np.isnan(out["val/ctr_auc"]) and np.isnan(out["val/cvr_auc"])
    assert [r.getMessage() for r in caplog.records] == [
        "val/ctr_auc is null: all 3 rows have label click=0 (AUC needs both classes)",
        "val/cvr_auc is null: no row satisfies where: click (AUC needs both classes)",
    ]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="mtlrec.training.metrics"):
        split_metrics("val", predictions, labels, targets, spec, spec.tasks, None, undefined)
    assert caplog.records == []  # once per run, split and metric, not every epoch
    assert undefined == {
        "val/ctr_auc": "all 3 rows have label click=0 (AUC needs both classes)",
        "val/cvr_auc": "no row satisfies where: click (AUC needs both classes)",
    }
