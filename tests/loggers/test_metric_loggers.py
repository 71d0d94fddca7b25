"""logger=tensorboard / logger=mlflow: a real tiny training writes with the real library to a temp
dir; the values read back equal history.csv and metrics.json."""

from __future__ import annotations

import csv

import pytest

from mtlrec.errors import MtlrecError
from mtlrec.loggers import build_logger
from mtlrec.loggers.base import flatten_config


def read_history(run_dir):
    with open(run_dir / "history.csv") as f:
        return list(csv.DictReader(f))


def test_flatten_config():
    assert flatten_config({"model": {"num_experts": 4, "dims": [8, 4]}, "x": None}) == {
        "model.num_experts": "4",
        "model.dims": "[8, 4]",
        "x": "null",
    }


def test_unknown_logger_is_one_line(tmp_path):
    with pytest.raises(
        MtlrecError,
        match=r"^logger.name 'comet' is unknown; use one of: none, tensorboard, mlflow, wandb$",
    ):
        build_logger({"name": "comet"}, tmp_path, {})


def test_tensorboard_mirrors_history_and_final_metrics(train_tiny):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir, metrics = train_tiny(["model=mmoe", "model.num_experts=2", "logger=tensorboard"])
    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    history = read_history(run_dir)
    assert len(history) == 2
    for name in ("val/mean_auc", "train/loss", "gate/cvr/expert_1"):
        scalars = events.Scalars(name)
        assert [s.step for s in scalars] == [1, 2]
        assert [s.value for s in scalars] == pytest.approx(
            [float(r[name]) for r in history], rel=1e-6
        )
    final = events.Scalars("final/test/mean_auc")
    assert final[0].value == pytest.approx(metrics["metrics"]["test/mean_auc"], rel=1e-6)
    assert "config/text_summary" in events.Tags()["tensors"]
    assert events.Scalars("final/best_epoch")[0].value == metrics["best_epoch"]
    # hparams keep their types, so the HPARAMS tab can sort and filter numbers and booleans.
    from tensorboard.plugins.hparams import plugin_data_pb2

    content = events.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    hparams = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info.hparams
    assert hparams["model.num_experts"].number_value == 2.0
    assert hparams["trainer.lr"].number_value == pytest.approx(0.001)
    assert hparams["model.expert_dims"].string_value == "[64, 32]"
    assert hparams["status"].string_value == "completed"
    # torch's add_hparams tests int before bool, so a boolean arrives as the number 0/1.
    assert hparams["trainer.deterministic"].WhichOneof("kind") == "number_value"
    assert hparams["trainer.deterministic"].number_value == 0.0
    assert hparams["seed"].number_value == 42.0


def test_mlflow_mirrors_params_history_final_metrics_and_status(train_tiny, tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    uri = (tmp_path / "mlruns").as_uri()
    run_dir, metrics = train_tiny(
        ["model=mmoe", "model.num_experts=2", "logger=mlflow", f"logger.tracking_uri={uri}"]
    )
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("mtlrec")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.tags["mtlrec.status"] == "completed"
    assert run.data.tags["mtlrec.run_dir"] == str(run_dir.resolve())
    assert run.data.params["model.num_experts"] == "2"
    assert run.data.params["model.expert_dims"] == "[64, 32]"
    assert run.data.params["trainer.epochs"] == "2"
    history = read_history(run_dir)
    points = client.get_metric_history(run.info.run_id, "val/mean_auc")
    logged = sorted((p.step, p.value) for p in points)
    assert [step for step, _ in logged] == [int(r["epoch"]) for r in history]
    assert [value for _, value in logged] == pytest.approx(
        [float(r["val/mean_auc"]) for r in history]
    )
    assert run.data.metrics["final/test/mean_auc"] == pytest.approx(
        metrics["metrics"]["test/mean_auc"]
    )
    assert run.data.metrics["final/best_epoch"] == metrics["best_epoch"]


def test_mlflow_failed_run_is_marked_failed(tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    monkeypatch.chdir(tmp_path)  # default store: sqlite beside the run dir
    logger = build_logger({"name": "mlflow"}, tmp_path / "run", {"seed": 3, "trainer": {"lr": 0.5}})
    logger.log_epoch({"epoch": 1, "train/loss": float("nan"), "val/mean_auc": 0.5})
    logger.finish("failed")
    assert logger.tracking_uri == f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=logger.tracking_uri)
    run = client.get_run(logger.run_id)
    assert run.info.status == "FAILED" and run.data.tags["mtlrec.status"] == "failed"
    assert run.data.params == {"seed": "3", "trainer.lr": "0.5"}
    assert run.data.metrics == {"val/mean_auc": 0.5}  # NaN loss: not logged
    assert run.info.run_name == "run"  # the run dir below the current dir
    assert not (tmp_path / "mlruns").exists()


def test_mlflow_params_are_json_values():
    from mtlrec.loggers.mlflow_logger import mlflow_params

    assert mlflow_params(
        {"seed": 3, "lr": 1e-3, "on": True, "dims": [64, 32], "none": None, "name": "esmm"}
    ) == {
        "seed": "3",
        "lr": "0.001",
        "on": "true",
        "dims": "[64, 32]",
        "none": "null",
        "name": "esmm",
    }


def test_mlflow_sqlite_without_sqlalchemy_is_one_line(tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "alembic" else real(name, *a)
    )
    monkeypatch.chdir(tmp_path)  # the default store is MLflow's: ./mlflow.db from the cwd
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(MtlrecError) as e:
        build_logger({"name": "mlflow"}, tmp_path / "run", {})
    assert str(e.value) == (
        f"logger=mlflow keeps runs in sqlite:///{tmp_path / 'mlflow.db'}, which needs alembic: "
        "pip install alembic (or set logger.tracking_uri=http://YOUR_SERVER)"
    )
