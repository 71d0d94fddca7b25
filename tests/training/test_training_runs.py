"""Short real trainings: complete run dirs, metric keys, determinism, regression, checkpoints."""

import csv
import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

from mtlrec.data.loader import load_splits
from mtlrec.data.spec import DatasetSpec, FeatureSpec, TaskSpec
from mtlrec.training.checkpoint import load_checkpoint, model_from_checkpoint
from mtlrec.training.metrics import eval_targets
from mtlrec.training.trainer import Trainer, TrainerConfig

EXPECTED_TEST_KEYS = {
    "esmm": {
        "ctr_auc",
        "ctcvr_auc",
        "cvr_auc",
        "cvr_auc_entire",
        "mean_auc",
        "ctr_logloss",
        "loss",
    },
    "mmoe": {"ctr_auc", "cvr_auc", "cvr_auc_entire", "mean_auc", "mean_logloss"},
    "shared_bottom": {"ctr_auc", "cvr_auc", "cvr_auc_entire", "mean_auc"},
    "single_task": {"ctr_auc", "cvr_auc", "cvr_auc_entire", "mean_auc"},
    "cvr_base": {"cvr_auc", "cvr_auc_entire", "cvr_logloss", "mean_auc"},
}


def read_history(run_dir):
    with open(run_dir / "history.csv") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("model", sorted(EXPECTED_TEST_KEYS))
def test_short_training_leaves_a_complete_run_dir(train_tiny, model):
    run_dir, metrics = train_tiny([f"model={model}"])
    for name in (
        "metrics.json",
        "history.csv",
        "env.json",
        "checkpoints/best.pt",
        "checkpoints/last.pt",
    ):
        assert (run_dir / name).is_file(), name
    assert metrics["status"] == "completed" and metrics["error"] is None
    assert metrics["seed"] == 42 and metrics["data_order_seed"] == 42
    assert metrics["model"] == model and metrics["best_epoch"] in (1, 2)
    test_keys = {k.split("/", 1)[1] for k in metrics["metrics"] if k.startswith("test/")}
    assert EXPECTED_TEST_KEYS[model] <= test_keys
    assert {k.split("/", 1)[1] for k in metrics["metrics"] if k.startswith("val/")} == test_keys
    for key, value in metrics["metrics"].items():
        if "auc" in key and value is not None:
            assert 0.0 <= value <= 1.0, key
    assert metrics["train_samples_per_s"] > 0 and metrics["wall_seconds"] > 0
    history = read_history(run_dir)
    assert [int(r["epoch"]) for r in history] == list(range(1, metrics["epochs_run"] + 1))
    assert {"train/loss", "lr", "seconds", "train_samples_per_s", "val/mean_auc"} <= set(history[0])
    env = json.loads((run_dir / "env.json").read_text())
    assert env["torch_num_threads"] == 1 and env["device"] == "cpu"


def test_mmoe_records_gate_weights_per_task_and_expert(train_tiny):
    run_dir, _ = train_tiny(["model=mmoe", "model.num_experts=3"])
    row = read_history(run_dir)[-1]
    for task in ("ctr", "cvr"):
        weights = [float(row[f"gate/{task}/expert_{e}"]) for e in range(3)]
        assert sum(weights) == pytest.approx(1.0, abs=1e-5) and min(weights) > 0


def test_same_seed_same_results_other_seed_other_results(train_tiny):
    run_a, a = train_tiny(["model=mmoe"], name="a")
    run_b, b = train_tiny(["model=mmoe"], name="b")
    run_c, c = train_tiny(["model=mmoe", "seed=7"], name="c")
    assert a["metrics"] == b["metrics"]  # exact equality, every value
    state_a = load_checkpoint(run_a / "checkpoints/best.pt")["model_state"]
    state_b = load_checkpoint(run_b / "checkpoints/best.pt")["model_state"]
    assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)
    assert a["metrics"] != c["metrics"] and c["seed"] == 7


def test_best_checkpoint_rebuilds_the_model_and_its_test_metrics(train_tiny):
    """A run dir is self-describing: best.pt alone rebuilds the model that produced the test metrics."""
    run_dir, metrics = train_tiny(["model=esmm", "trainer.epochs=3", "trainer.patience=null"])
    payload = load_checkpoint(run_dir / "checkpoints/best.pt")
    assert payload["epoch"] == metrics["best_epoch"]
    model, spec, tasks = model_from_checkpoint(payload)
    data_dir = payload["config"]["dataset"]["path"]
    targets = eval_targets(tasks, model.output_types, spec)
    splits = load_splits(data_dir, spec, tuple(t.task for t in targets), names=("test",))
    trainer = Trainer(model, spec, tasks, targets, TrainerConfig(), torch.device("cpu"), 0)
    again = trainer.evaluate(splits["test"], "test")
    for key, value in metrics["metrics"].items():
        if key.startswith("test/") and value is not None:
            assert again[key] == pytest.approx(value, rel=1e-6, abs=1e-9), key


def write_regression_dataset(directory, n=3000, seed=0):
    rng = np.random.default_rng(seed)
    group = rng.integers(0, 10, n)
    x = rng.normal(size=n)
    effect = np.linspace(-2, 2, 10)
    spend = (effect[group] + 1.5 * x + 0.1 * rng.normal(size=n)).astype(np.float32)
    bought = (rng.random(n) < 1 / (1 + np.exp(-(effect[group] + x)))).astype(np.int8)
    df = pd.DataFrame({"group": group, "x": x.astype(np.float32), "spend": spend, "bought": bought})
    spec = DatasetSpec(
        "regression_toy",
        (FeatureSpec("group", "sparse", 10), FeatureSpec("x", "dense")),
        ("spend", "bought"),
        (TaskSpec("spend", "spend", "regression"), TaskSpec("bought", "bought")),
        splits={"train": "train.parquet", "val": "val.parquet", "test": "test.parquet"},
    )
    directory.mkdir()
    bounds = {
        "train": (0, int(0.6 * n)),
        "val": (int(0.6 * n), int(0.8 * n)),
        "test": (int(0.8 * n), n),
    }
    for name, (lo, hi) in bounds.items():
        df.iloc[lo:hi].to_parquet(directory / f"{name}.parquet")
    spec.save(directory)
    return df


@pytest.mark.parametrize("model", ["mmoe", "shared_bottom"])
def test_a_regression_task_trains_next_to_a_binary_one(train_tiny, tmp_path, model):
    df = write_regression_dataset(tmp_path / "reg")
    run_dir, metrics = train_tiny(
        [
            f"model={model}",
            "dataset=prepared",
            f"dataset.path={tmp_path / 'reg'}",
            "trainer.epochs=8",
            "trainer.lr=0.01",
            "trainer.patience=null",
        ]
    )
    m = metrics["metrics"]
    variance = float(df["spend"].var())
    assert m["test/spend_mse"] < 0.2 * variance  # far better than predicting the mean
    assert m["test/mean_mse"] == m["test/spend_mse"]
    assert m["test/bought_auc"] > 0.7
    assert metrics["monitor"] == "val/loss"  # auto: binary and regression tasks mixed
    history = read_history(run_dir)
    assert float(history[-1]["train/spend_loss"]) < float(history[0]["train/spend_loss"])


def test_regression_only_monitors_mse(train_tiny, tmp_path):
    write_regression_dataset(tmp_path / "reg")
    _, metrics = train_tiny(
        [
            "model=mmoe",
            "dataset=prepared",
            f"dataset.path={tmp_path / 'reg'}",
            "dataset.tasks=[spend]",
        ]
    )
    assert metrics["monitor"] == "val/mean_mse" and metrics["monitor_mode"] == "min"
    assert not any("auc" in k for k in metrics["metrics"])
    assert math.isfinite(metrics["best_value"])
