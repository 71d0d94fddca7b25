"""logger=mlflow through the real CLI: the default store is MLflow's own default from the cwd
(./mlflow.db: `mlflow.search_runs()` there finds the run and its artifacts; no file store warning), params read back as numbers, and a run interrupted by SIGTERM then resumed
continues the same MLflow run (one run, every epoch once, FINISHED)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from helpers.runs import TINY_CLI, mtlrec

pytest.importorskip("mlflow")

ENV = dict(os.environ, OMP_WAIT_POLICY="PASSIVE", HYDRA_FULL_ERROR="0")
ENV.pop("MLFLOW_TRACKING_URI", None)
ARGS = [
    *(a for a in TINY_CLI if "batch_size" not in a), "trainer.batch_size=32",
    "checkpoint.every_n_steps=5", "trainer.epochs=3", "logger=mlflow",
]  # fmt: skip


def _default_signals() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def test_mlflow_default_store_typed_params_and_resume_keeps_the_run(tmp_path):
    from mlflow.tracking import MlflowClient

    run_dir = tmp_path / "runs" / "one"
    proc = subprocess.Popen(
        [sys.executable, "-m", "mtlrec", "train", *ARGS, f"hydra.run.dir={run_dir}"],
        cwd=tmp_path, env=ENV, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, preexec_fn=_default_signals,
    )  # fmt: skip
    try:  # SIGTERM once epoch 1 is in history.csv (and so in MLflow)
        deadline = time.monotonic() + 240
        while not (run_dir / "history.csv").exists():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.005)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, err
    for text in (out, err):
        assert "FutureWarning" not in text and "file store" not in text.lower()
        assert "Creating initial MLflow database tables" not in text
    record = json.loads((run_dir / "mlflow.json").read_text())
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"  # MLflow's default from the cwd
    assert record["tracking_uri"] == uri
    client = MlflowClient(tracking_uri=uri)
    assert client.get_run(record["run_id"]).info.status == "KILLED"

    resumed = mtlrec("train", f"resume={run_dir}", cwd=tmp_path / "runs")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert json.loads((run_dir / "mlflow.json").read_text()) == record
    experiment = client.get_experiment_by_name("mtlrec")
    (run,) = client.search_runs([experiment.experiment_id])  # one MLflow run, not two
    assert run.info.run_id == record["run_id"] and run.info.status == "FINISHED"
    assert run.data.tags["mtlrec.resumed"] == "true"
    steps = [p.step for p in client.get_metric_history(run.info.run_id, "val/mean_auc")]
    assert sorted(steps) == [1, 2, 3]
    assert run.data.params["trainer.lr"] == "0.001" and run.data.params["seed"] == "42"
    assert run.data.params["trainer.deterministic"] in ("true", "false")
    numeric = client.search_runs(
        [experiment.experiment_id], filter_string="params.`trainer.epochs` = '3'"
    )
    assert [r.info.run_id for r in numeric] == [record["run_id"]]

    # MLflow's own default from the directory the run started in finds it, with its artifacts
    found = subprocess.run(
        [sys.executable, "-c", FIND_RUNS], cwd=tmp_path, env=ENV, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert found.returncode == 0, found.stderr[-2000:]
    assert json.loads(found.stdout.strip().splitlines()[-1]) == {
        "run_ids": [record["run_id"]],
        "artifacts": ["checkpoints", "config.yaml", "history.csv", "metrics.json"],
        "checkpoints": ["checkpoints/best.pt"],
    }


FIND_RUNS = """
import json, mlflow
from mlflow.tracking import MlflowClient
runs = mlflow.search_runs(experiment_names=["mtlrec"])
client = MlflowClient()
run_id = runs["run_id"].tolist()[0]
print(json.dumps({
    "run_ids": runs["run_id"].tolist(),
    "artifacts": sorted(a.path for a in client.list_artifacts(run_id)),
    "checkpoints": sorted(a.path for a in client.list_artifacts(run_id, "checkpoints")),
}))
"""
