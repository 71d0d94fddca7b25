"""Calibration: pcoc and ece in every report, reliability diagrams, `mtlrec calibrate` temperatures
applied by evaluate / predict / export."""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from conftest import run_training
from mtlrec.data.loader import load_split
from mtlrec.data.sources import resolve_dataset_dir
from mtlrec.errors import MtlrecError
from mtlrec.inference import evaluate, export, predict
from mtlrec.inference.calibrate import calibrate
from mtlrec.training.calibration import ece, fit_temperature, pcoc, reliability_bins
from mtlrec.training.checkpoint import INTEGRITY_KEY, _tensors, load_checkpoint, tensor_digest


def test_pcoc_and_equal_mass_ece_by_hand():
    y = np.array([0, 0, 1, 0, 1, 1], dtype=float)
    p = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.9])
    assert pcoc(y, p) == pytest.approx(2.4 / 3)
    bins = reliability_bins(y, p, 3)  # sorted: (0.1, 0.2) (0.3, 0.4) (0.5, 0.9): 2 rows each
    assert bins["rows"] == [2, 2, 2]
    assert bins["mean_prediction"] == pytest.approx([0.15, 0.35, 0.7])
    assert bins["positive_rate"] == pytest.approx([0.0, 0.5, 1.0])
    assert ece(y, p, 3) == pytest.approx((0.15 + 0.15 + 0.3) / 3)
    assert np.isnan(pcoc(np.zeros(3), np.full(3, 0.2)))


def test_temperature_recovers_a_known_scale():
    g = np.random.default_rng(0)
    z = g.normal(0, 2, 20000)
    y = (g.random(20000) < 1 / (1 + np.exp(-z))).astype(float)
    t = fit_temperature(y, 3 * z)  # logits 3x too confident
    assert t == pytest.approx(3.0, rel=0.05)
    sigmoid = lambda x: 1 / (1 + np.exp(-x))  # noqa: E731
    assert ece(y, sigmoid(3 * z / t)) < ece(y, sigmoid(3 * z)) / 3


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """An ESMM run whose best.pt is then made over-confident: the ctr and cvr towers' logits
    times 3 (their last linear layer scaled)."""
    run_dir, metrics = run_training(
        tmp_path_factory.mktemp("calibration"),
        ["trainer.epochs=3", "trainer.lr=0.003", "metrics.ece_bins=10"],
    )
    path = run_dir / "checkpoints" / "best.pt"
    payload = torch.load(path, weights_only=True)
    state = payload["model_state"]
    for k in state:
        if re.match(r"towers\.(ctr|cvr)\.1\.", k):
            state[k] = state[k] * 3
    payload.pop(INTEGRITY_KEY)
    payload[INTEGRITY_KEY] = {name: tensor_digest(t) for name, t in _tensors(payload)}
    torch.save(payload, path)
    return run_dir, metrics


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mtlrec", *args], capture_output=True, text=True, timeout=180
    )


def test_calibration_metrics_are_in_metrics_history_and_reliability(trained):
    run_dir, metrics = trained
    values = metrics["metrics"]
    for split in ("val", "test"):
        for task in ("ctr", "cvr"):
            assert 0 < values[f"{split}/{task}_pcoc"] < 10
            assert 0 <= values[f"{split}/{task}_ece"] < 1
    assert "test/mean_ece" not in values  # calibration stays out of the means
    with (run_dir / "history.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert all(float(r["val/ctr_ece"]) >= 0 for r in rows)
    bins = json.loads((run_dir / "reliability.json").read_text())
    assert bins["split"] == "test" and set(bins["targets"]) >= {"ctr", "cvr"}
    assert len(bins["targets"]["ctr"]["rows"]) == 10  # metrics.ece_bins
    assert sum(bins["targets"]["ctr"]["rows"]) == 600  # every test row


def test_compare_shows_calibration_columns_and_draws_reliability(trained, tmp_path):
    pytest.importorskip("matplotlib")
    run_dir, _ = trained
    out = cli(
        "compare",
        str(run_dir),
        "--metric",
        "test/ctr_ece",
        "--metric",
        "test/ctr_pcoc",
        "--plot",
        str(tmp_path),
    )
    assert out.returncode == 0, out.stderr
    assert "test/ctr_ece" in out.stdout and "test/ctr_pcoc" in out.stdout
    assert (tmp_path / "reliability.png").stat().st_size > 10_000


def test_calibrate_lowers_val_logloss_and_ece_and_every_scorer_applies_it(trained, tmp_path):
    run_dir, _ = trained
    before = evaluate(run_dir, "val")
    done = cli("calibrate", str(run_dir))
    assert done.returncode == 0, done.stderr
    record = json.loads((run_dir / "calibration.json").read_text())
    assert set(record["temperatures"]) == {"ctr", "cvr", "ctcvr"}
    assert record["temperatures"]["ctr"] > 1.5  # the x3 logits come back down
    assert f"ctr: temperature {record['temperatures']['ctr']:.4f}" in done.stdout
    after = evaluate(run_dir, "val")
    for task in ("ctr", "cvr", "ctcvr"):
        assert after[f"val/{task}_logloss"] < before[f"val/{task}_logloss"]
        assert after[f"val/{task}_auc"] == pytest.approx(before[f"val/{task}_auc"], abs=1e-6)
    # ECE over 10 bins: on ctr (1,000+ clicks in val); cvr's ~100 clicked rows are noise
    assert after["val/ctr_ece"] < before["val/ctr_ece"]
    assert after["val/ctr_ece"] == pytest.approx(record["scores"]["ctr"]["ece_after"], abs=1e-6)
    with pytest.raises(MtlrecError) as info:
        calibrate(run_dir)
    assert str(info.value) == (
        f"{run_dir / 'calibration.json'} exists; pass --overwrite to fit the temperatures again"
    )

    # predict and export score the calibrated model alike
    payload = load_checkpoint(run_dir / "checkpoints" / "best.pt")
    data_dir = resolve_dataset_dir(payload["config"]["dataset"])
    spec_test = data_dir / "test.parquet"
    dst = tmp_path / "pred.parquet"
    predict(run_dir, spec_test, dst)
    got = pq.read_table(dst)
    result = export(run_dir, "torchscript", tmp_path / "ts")
    loaded = torch.jit.load(str(tmp_path / "ts" / "model.pt"))
    table = pq.read_table(spec_test)
    from mtlrec.data.spec import DatasetSpec

    spec = DatasetSpec.load(data_dir)
    raw = np.stack([table.column(f.name).to_numpy() for f in spec.sparse], 1).astype(np.int64)
    dense = np.stack([table.column(f.name).to_numpy() for f in spec.dense], 1).astype(np.float32)
    with torch.no_grad():
        exported = loaded(torch.from_numpy(raw), torch.from_numpy(dense))
    for name in result["outputs"]:
        np.testing.assert_allclose(exported[name].numpy(), got.column(name).to_numpy(), atol=1e-5)
    split = load_split(spec_test, spec)
    assert len(split) == got.num_rows
