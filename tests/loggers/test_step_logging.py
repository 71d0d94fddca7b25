"""Per-step scalars (lr, each task's loss, the balancer's weights) every trainer.log_every_n_steps
in every logger; TensorBoard in one event file that a resume continues without duplicates;
the optional wandb logger (offline, no network) through the real CLI."""

from __future__ import annotations

import csv
import json
import struct
import time
from pathlib import Path

import pytest

from conftest import TINY
from helpers.cli import mtlrec
from mtlrec.errors import MtlrecError

# TINY: 2800 train rows / 256 = 10 optimizer steps per epoch (tail merged), 2 epochs.
STEPS = list(range(3, 21, 3))  # trainer.log_every_n_steps=3


def history(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "history.csv") as f:
        return list(csv.DictReader(f))


def _append_events(path: Path, scalars: list[tuple[str, float, int]]) -> None:
    """What a process killed after its last checkpoint leaves: events beyond that checkpoint."""
    from tensorboard.compat.proto import event_pb2
    from tensorboard.summary.writer.record_writer import RecordWriter
    from torch.utils.tensorboard import summary

    with open(path, "ab") as f:
        records = RecordWriter(f)
        for tag, value, step in scalars:
            event = event_pb2.Event(wall_time=time.time(), step=step)
            event.summary.CopyFrom(summary.scalar(tag, value))
            records.write(event.SerializeToString())


def test_tensorboard_steps_in_one_event_file_that_a_resume_continues(tmp_path, monkeypatch):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from conftest import compose_train
    from helpers.stops import StopAfter
    from mtlrec.experiment import run
    from mtlrec.training.signals import StopRequest, TrainingInterrupted

    options = [*TINY, "logger=tensorboard", "trainer.log_every_n_steps=3", "trainer.patience=null"]
    options += ["balance=uncertainty"]  # learned task weights: step/weight/* change per step
    monkeypatch.setattr(StopAfter, "k", 15)  # mid epoch 2: a checkpoint at step 15
    monkeypatch.setattr("mtlrec.experiment.StopRequest", StopAfter)
    run_dir = tmp_path / "run"
    with pytest.raises(TrainingInterrupted):
        run(compose_train(options), run_dir)
    monkeypatch.setattr("mtlrec.experiment.StopRequest", StopRequest)
    (event_file,) = (run_dir / "tensorboard").iterdir()
    # as if the process had gone on past its checkpoint: values the resumed run does again
    _append_events(event_file, [("step/lr", 99.0, 18), ("val/ctr_auc", 99.0, 2)])
    run(compose_train([*options, f"resume={run_dir}"]), run_dir)

    assert [p.name for p in (run_dir / "tensorboard").iterdir()] == [event_file.name]
    events = EventAccumulator(str(event_file.parent), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    for tag in ("step/lr", "step/train/ctr_loss", "step/train/ctcvr_loss", "step/weight/ctcvr"):
        assert [s.step for s in events.Scalars(tag)] == STEPS, tag
    assert 99.0 not in [s.value for s in events.Scalars("step/lr")]
    weights = [s.value for s in events.Scalars("step/weight/ctcvr")]
    assert len(set(weights)) == len(weights)  # learned: one value per logged step
    rows = history(run_dir)
    for tag in ("val/ctr_auc", "train/loss", "weight/ctr"):
        scalars = events.Scalars(tag)
        assert [s.step for s in scalars] == [1, 2]
        assert [s.value for s in scalars] == pytest.approx([float(r[tag]) for r in rows])
    # the final summary once, of the completed run (the interrupted run's was dropped)
    assert len(events.Scalars("final/test/mean_auc")) == 1
    from tensorboard.plugins.hparams import plugin_data_pb2

    content = events.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    info = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info
    assert info.hparams["status"].string_value == "completed"


def test_mlflow_gets_the_step_scalars(train_tiny, tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    monkeypatch.chdir(tmp_path)  # MLflow's default store: ./mlflow.db
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    run_dir, _ = train_tiny(["logger=mlflow", "trainer.log_every_n_steps=3"])
    record = json.loads((run_dir / "mlflow.json").read_text())
    client = MlflowClient(record["tracking_uri"])
    lr = client.get_metric_history(record["run_id"], "step/lr")
    assert [m.step for m in lr] == STEPS and {m.value for m in lr} == {0.001}
    loss = client.get_metric_history(record["run_id"], "step/train/ctr_loss")
    assert [m.step for m in loss] == STEPS and all(0 < m.value < 1 for m in loss)
    weight = client.get_metric_history(record["run_id"], "step/weight/ctcvr")
    assert [m.value for m in weight] == [1.0] * len(STEPS)  # fixed weights
    val = client.get_metric_history(record["run_id"], "val/ctr_auc")
    assert [m.step for m in val] == [1, 2]


def wandb_records(run_dir: Path) -> list:
    """The records of an offline W&B run file (LevelDB log format: 7-byte file header, then
    records in 32 KiB blocks, each with a 7-byte header: crc, length, type)."""
    from wandb.proto import wandb_internal_pb2

    (path,) = (run_dir / "wandb").glob("offline-run-*/run-*.wandb")
    data, pos, pending, out = path.read_bytes(), 7, b"", []
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:  # a block's tail too short for a header: padding
            pos += 32768 - pos % 32768
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        pending += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a full record, or the last piece of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            out.append(record)
            pending = b""
    return out


def test_wandb_offline_through_the_cli(tmp_path):
    pytest.importorskip("wandb", reason="the wandb extra (in dev) is not installed")
    run_dir = tmp_path / "run"
    args = ["train", *TINY, "logger=wandb", "logger.mode=offline", "trainer.log_every_n_steps=3"]
    done = mtlrec(*args, f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert not (tmp_path / "wandb").exists()  # the W&B files are the run dir's
    rows = []
    for record in wandb_records(run_dir):
        if record.WhichOneof("record_type") == "history":
            rows.append(
                {
                    i.key or "/".join(i.nested_key): json.loads(i.value_json)
                    for i in record.history.item
                }
            )
    steps = [r for r in rows if "global_step" in r]
    assert [r["global_step"] for r in steps] == STEPS
    assert all(r["step/lr"] == 0.001 and r["step/weight/ctr"] == 1.0 for r in steps)
    epochs = [r for r in rows if "epoch" in r]
    assert [r["val/ctr_auc"] for r in epochs] == pytest.approx(
        [float(r["val/ctr_auc"]) for r in history(run_dir)]
    )
    metrics = json.loads((run_dir / "metrics.json").read_text())
    summary = {}
    for record in wandb_records(run_dir):
        if record.WhichOneof("record_type") == "summary":
            for item in record.summary.update:
                summary[item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
    assert summary["final/test/mean_auc"] == pytest.approx(metrics["metrics"]["test/mean_auc"])
    assert summary["status"] == "completed"
    assert json.loads((run_dir / "wandb.json").read_text())["last_step"] == 18


def test_a_missing_logger_package_is_one_line_before_any_run_dir(tmp_path, monkeypatch):
    import importlib.util

    from conftest import compose_train
    from mtlrec.experiment import run

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a)
    )
    with pytest.raises(MtlrecError) as info:
        run(compose_train([*TINY, "logger=wandb"]), tmp_path / "run")
    assert str(info.value) == (
        'logger=wandb needs the wandb package: pip install "mtlrec[wandb]" (or use logger=none)'
    )
    assert not (tmp_path / "run").exists()
