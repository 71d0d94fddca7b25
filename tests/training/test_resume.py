"""Interruption and exact resume: a real `mtlrec train` killed mid-epoch, resumed, compared exactly."""

from __future__ import annotations

import csv
import json
import math
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import TINY, compose_train, run_training
from helpers.stops import StopAfter
from mtlrec.errors import MtlrecError
from mtlrec.training import signals
from mtlrec.training.checkpoint import LAST, PREVIOUS, load_checkpoint, load_resumable
from mtlrec.training.objective import Objective
from mtlrec.training.signals import StopRequest, TrainingInterrupted

BATCH = ["trainer.batch_size=32", "model.dropout=0.2"]  # 87 steps per epoch; dropout draws RNG
# 2800 train rows / 32 = 87.5: trainer.tail_batch=merge adds the 16-row tail to step 87.
STEPS_PER_EPOCH = 87


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """The uninterrupted reference run (2 epochs, same seed)."""
    run_dir, metrics = run_training(tmp_path_factory.mktemp("straight"), BATCH)
    return run_dir, metrics


def weights(run_dir: Path, name: str) -> dict[str, torch.Tensor]:
    return load_checkpoint(run_dir / "checkpoints" / name)["model_state"]


def assert_same_run(run_dir: Path, ref_dir: Path) -> None:
    got = json.loads((run_dir / "metrics.json").read_text())
    ref = json.loads((ref_dir / "metrics.json").read_text())
    assert got["status"] == "completed"
    assert got["metrics"] == ref["metrics"]  # exact float equality, every val/ and test/ metric
    for key in ("best_epoch", "best_value", "epochs_run", "seed", "data_order_seed"):
        assert got[key] == ref[key], key
    for name in ("best.pt", LAST):
        a, b = weights(run_dir, name), weights(ref_dir, name)
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), f"{name}: {k} differs"
    history = (run_dir / "history.csv").read_text().splitlines()
    assert len(history) == 1 + got["epochs_run"]


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "mtlrec", "train", *args]


def test_sigint_mid_epoch_then_resume_matches_uninterrupted_run(tmp_path, straight):
    run_dir = tmp_path / "run"
    overrides = [*TINY, *BATCH, "checkpoint.every_n_steps=5", f"hydra.run.dir={run_dir}"]
    proc = subprocess.Popen(
        cli(*overrides), cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        deadline = time.time() + 120
        while not (run_dir / "checkpoints" / LAST).exists():  # the first every_n_steps checkpoint
            assert proc.poll() is None, proc.stdout.read()
            assert time.time() < deadline, "no checkpoint within 120 s"
            time.sleep(0.02)
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, out
    assert "Traceback" not in out
    assert "training stopped after epoch 1 step" in out
    assert f"continue with: mtlrec train resume={run_dir}" in out
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "interrupted"
    assert metrics["error"].startswith("SIGINT: training stopped after epoch 1 step ")
    state = torch.load(run_dir / "checkpoints" / LAST, weights_only=False)["train_state"]
    assert state["epoch"] == 1 and 5 <= state["step"] < STEPS_PER_EPOCH  # really mid-epoch
    assert state["perm"].shape == (2800,)  # every train row
    assert not list((run_dir / "checkpoints").glob("*.tmp"))

    resumed = subprocess.run(
        cli(f"resume={run_dir}"), cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert resumed.returncode == 0, resumed.stderr + resumed.stdout
    assert f"resuming from {run_dir / 'checkpoints' / LAST} (epoch 1 step {state['step']})" in (
        resumed.stdout
    )
    assert_same_run(run_dir, straight[0])
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["error"] is None and "resumed_at" in metrics


# Polls: one per training step plus one after each epoch's checkpoint.
@pytest.mark.parametrize(
    "stop_at, epoch, step", [(STEPS_PER_EPOCH, 1, STEPS_PER_EPOCH), (STEPS_PER_EPOCH + 30, 2, 29)]
)
def test_sigterm_then_resume_in_process_is_exact(
    tmp_path, straight, monkeypatch, stop_at, epoch, step
):
    """Stop at the last step of epoch 1 and mid-epoch 2; resume from there; same results."""
    from mtlrec.experiment import run

    monkeypatch.setattr(StopAfter, "k", stop_at)
    monkeypatch.setattr("mtlrec.experiment.StopRequest", StopAfter)
    run_dir = tmp_path / "run"
    with pytest.raises(TrainingInterrupted) as info:
        run(compose_train([*TINY, *BATCH]), run_dir)
    assert info.value.exit_code == 128 + signal.SIGTERM
    assert str(info.value) == (
        f"SIGTERM: training stopped after epoch {epoch} step {step}/{STEPS_PER_EPOCH}; "
        f"saved checkpoints/last.pt (epoch {epoch} step {step})"
    )
    assert json.loads((run_dir / "metrics.json").read_text())["status"] == "interrupted"

    monkeypatch.setattr("mtlrec.experiment.StopRequest", StopRequest)
    run(compose_train([*TINY, *BATCH, f"resume={run_dir}"]), run_dir)
    assert_same_run(run_dir, straight[0])


def test_corrupt_last_checkpoint_falls_back_to_previous_and_stays_exact(
    tmp_path, straight, monkeypatch, caplog
):
    from mtlrec.experiment import run

    monkeypatch.setattr(StopAfter, "k", 40)
    monkeypatch.setattr("mtlrec.experiment.StopRequest", StopAfter)
    run_dir = tmp_path / "run"
    with pytest.raises(TrainingInterrupted):
        run(compose_train([*TINY, *BATCH, "checkpoint.every_n_steps=16"]), run_dir)
    ckpts = run_dir / "checkpoints"
    assert torch.load(ckpts / PREVIOUS, weights_only=False)["train_state"]["step"] == 32
    last = ckpts / LAST
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])  # a torn write
    payload, path = load_resumable(ckpts)
    assert path == ckpts / PREVIOUS and payload["train_state"]["step"] == 32
    assert f"{last}: checkpoint is truncated or corrupt" in caplog.text

    monkeypatch.setattr("mtlrec.experiment.StopRequest", StopRequest)
    run(
        compose_train([*TINY, *BATCH, "checkpoint.every_n_steps=16", f"resume={run_dir}"]),
        run_dir,
    )
    assert_same_run(run_dir, straight[0])

    (ckpts / PREVIOUS).write_bytes(b"not a checkpoint")
    last.write_bytes(b"")
    with pytest.raises(MtlrecError, match=f"^{last}: checkpoint is truncated or corrupt"):
        load_resumable(ckpts)


def test_nan_loss_stops_naming_task_and_step_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    original = Objective.losses
    calls = {"n": 0}

    def poisoned(self, outputs, labels):
        means, extra, sums, counts = original(self, outputs, labels)
        calls["n"] += 1
        if calls["n"] == 7:  # training step 7 of epoch 1: the ctr loss becomes NaN
            means = means * torch.tensor([math.nan, 1.0])
            sums = sums * torch.tensor([math.nan, 1.0])
        return means, extra, sums, counts

    monkeypatch.setattr(Objective, "losses", poisoned)
    with pytest.raises(MtlrecError) as info:
        run_training(tmp_path, [*BATCH, "checkpoint.every_n_steps=3"])
    assert str(info.value) == (
        "epoch 1 step 7: training loss of task(s) ['ctr'] is NaN/inf; stopped, the last good "
        "checkpoint is checkpoints/last.pt (epoch 1 step 6); lower trainer.lr or set "
        "trainer.grad_clip_norm"
    )
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["status"] == "failed" and metrics["error"] == str(info.value)
    payload = torch.load(tmp_path / "run" / "checkpoints" / LAST, weights_only=False)
    assert payload["train_state"]["step"] == 6
    assert all(torch.isfinite(v).all() for v in payload["model_state"].values())


def test_second_signal_stops_at_once_and_never_tears_a_checkpoint(tmp_path, monkeypatch):
    from mtlrec.runs import run_dir as run_dir_module

    # Whatever dispositions this process started with (SIGINT is ignored in a background job):
    # the request restores exactly those.
    before = {s: signal.getsignal(s) for s in signals.SIGNALS}
    stop = StopRequest()
    with stop:
        assert signal.getsignal(signal.SIGTERM) == stop._handle
        stop._handle(signal.SIGINT, None)
        assert stop.requested and stop.name == "SIGINT"
        with pytest.raises(KeyboardInterrupt):
            stop._handle(signal.SIGINT, None)  # the second one: at once
        assert signal.getsignal(signal.SIGINT) is before[signal.SIGINT]
    assert signal.getsignal(signal.SIGTERM) == before[signal.SIGTERM]

    # A second Ctrl-C that lands in the middle of writing last.pt: the old file survives whole.
    from mtlrec.experiment import run

    monkeypatch.setattr(StopAfter, "k", 20)
    monkeypatch.setattr("mtlrec.experiment.StopRequest", StopAfter)
    run_dir = tmp_path / "run"
    real_save = torch.save
    saves = {"n": 0}

    def save_then_ctrl_c(obj, f):
        saves["n"] += 1
        if saves["n"] == 2:  # the interruption's checkpoint, after the every_n_steps one
            f.write(b"half a checkpoint")
            raise KeyboardInterrupt
        real_save(obj, f)

    monkeypatch.setattr(run_dir_module.torch, "save", save_then_ctrl_c)
    with pytest.raises(TrainingInterrupted, match="stopped at once by a second signal"):
        run(compose_train([*TINY, *BATCH, "checkpoint.every_n_steps=10"]), run_dir)
    ckpts = run_dir / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == [PREVIOUS]  # no temp file, no torn last.pt
    assert torch.load(ckpts / PREVIOUS, weights_only=False)["train_state"]["step"] == 10
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "interrupted"
    assert load_resumable(ckpts)[1] == ckpts / PREVIOUS


def test_signal_handlers_are_inert_off_the_main_thread():
    import threading

    seen = []
    before = signal.getsignal(signal.SIGINT)

    def body():
        with StopRequest():
            seen.append(signal.getsignal(signal.SIGINT))

    t = threading.Thread(target=body)
    t.start()
    t.join()
    assert seen == [before]
    assert signals.SIGNALS == (signal.SIGINT, signal.SIGTERM)


def test_resume_translation_replays_the_original_overrides(tmp_path, monkeypatch):
    from mtlrec.cli import translate_resume

    run_dir = tmp_path / "r"
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "overrides.yaml").write_text(
        "- model=mmoe\n- trainer.epochs=2\n- resume=/old\n"
    )
    monkeypatch.chdir(tmp_path)
    args = translate_resume(["resume=r", "trainer.epochs=4"])
    assert args[:4] == [
        "model=mmoe",
        "trainer.epochs=4",
        f"resume='{run_dir}'",
        f"hydra.run.dir='{run_dir}'",
    ]
    # each attempt records its config in its own .hydra/resume-<time>/ (tests/test_resume_record.py)
    assert len(args) == 5 and args[4].startswith("hydra.output_subdir=.hydra/resume-")
    assert translate_resume(["model=esmm"]) == ["model=esmm"]
    with pytest.raises(ValueError, match="cannot be combined with -m"):
        translate_resume(["-m", "resume=r"])
    with pytest.raises(ValueError, match=r"resume=nowhere: no such run dir"):
        translate_resume(["resume=nowhere"])


def test_resume_a_finished_run_with_more_epochs_equals_the_longer_run(tmp_path, straight):
    """trainer.epochs may grow on resume: 1 epoch + resume to 2 == 2 epochs straight."""
    from mtlrec.experiment import run

    run_dir = tmp_path / "run"
    run(compose_train([*TINY, *BATCH, "trainer.epochs=1"]), run_dir)
    assert json.loads((run_dir / "metrics.json").read_text())["epochs_run"] == 1
    run(compose_train([*TINY, *BATCH, "trainer.epochs=2", f"resume={run_dir}"]), run_dir)
    assert_same_run(run_dir, straight[0])


def test_streamed_epoch_resumes_mid_epoch_exactly(tmp_path, monkeypatch):
    """dataset.streaming: the interrupted epoch is replayed from its first draw, skipping the
    batches already trained (row-group order and buffer shuffles are drawn lazily)."""
    from mtlrec.experiment import run

    stream = [
        "streaming=enabled",
        "streaming.shuffle_buffer=500",
        "streaming.read_rows=300",
        "streaming.prefetch=2",
    ]
    ref_dir, _ = run_training(tmp_path, [*BATCH, *stream], name="straight_stream")
    monkeypatch.setattr(StopAfter, "k", STEPS_PER_EPOCH + 40)
    monkeypatch.setattr("mtlrec.experiment.StopRequest", StopAfter)
    run_dir = tmp_path / "run"
    with pytest.raises(TrainingInterrupted, match=f"after epoch 2 step 39/{STEPS_PER_EPOCH}"):
        run(compose_train([*TINY, *BATCH, *stream]), run_dir)
    monkeypatch.setattr("mtlrec.experiment.StopRequest", StopRequest)
    run(compose_train([*TINY, *BATCH, *stream, f"resume={run_dir}"]), run_dir)
    assert_same_run(run_dir, ref_dir)


def test_checkpoint_written_before_tail_batch_and_train_state_resumes_exactly(
    tmp_path, monkeypatch
):
    """A mid-epoch last.pt in the layout mtlrec wrote before TrainState (history, early stopping
    and step duplicated at the top level; no trainer.tail_batch in its config, so its short last
    batch trained on its own) continues exactly as that run would have gone on."""
    from mtlrec.experiment import run

    keep = [*BATCH, "trainer.tail_batch=keep"]
    ref_dir, _ = run_training(tmp_path, keep, name="straight_keep")
    monkeypatch.setattr(StopAfter, "k", 88 + 1 + 20)  # 88 steps (87 full + the tail), then 20
    monkeypatch.setattr("mtlrec.experiment.StopRequest", StopAfter)
    run_dir = tmp_path / "run"
    with pytest.raises(TrainingInterrupted, match="after epoch 2 step 20/88"):
        run(compose_train([*TINY, *keep]), run_dir)
    last = run_dir / "checkpoints" / LAST
    payload = torch.load(last, weights_only=False)
    del payload["config"]["trainer"]["tail_batch"]
    state = payload["train_state"]
    payload.update(
        step=state["step"], history=state["history"], early_stopping=state["early_stopping"]
    )
    kind, keys, *rest = state["rng"]["numpy"]  # numpy's RNG state as a numpy array, as then
    state["rng"]["numpy"] = (kind, keys.numpy().astype("uint32"), *rest)
    del payload["tensor_sha256"]  # no per-tensor hashes then
    torch.save(payload, last)

    monkeypatch.setattr("mtlrec.experiment.StopRequest", StopRequest)
    run(compose_train([*TINY, *BATCH, f"resume={run_dir}"]), run_dir)
    assert_same_run(run_dir, ref_dir)


PRACTICES = [
    "trainer.lr_schedule=cosine",
    "trainer.warmup_steps=10",
    "trainer.accumulate_batches=2",
    "trainer.ema_decay=0.9",
    "trainer.lr=0.003",
]


def test_cosine_warmup_accumulation_and_ema_resume_mid_schedule_exactly(tmp_path, monkeypatch):
    """Stopped mid-epoch 2 (44 optimizer steps per epoch: 87 batches in pairs, the last alone),
    resumed: the lr schedule, the accumulation groups and the EMA continue where they were."""
    from mtlrec.experiment import run

    ref_dir, _ = run_training(tmp_path / "ref", [*BATCH, *PRACTICES])
    monkeypatch.setattr(StopAfter, "k", 44 + 1 + 15)  # per optimizer step and epoch end
    monkeypatch.setattr("mtlrec.experiment.StopRequest", StopAfter)
    run_dir = tmp_path / "run"
    with pytest.raises(TrainingInterrupted, match="after epoch 2 step 30/87"):
        run(compose_train([*TINY, *BATCH, *PRACTICES]), run_dir)
    state = torch.load(run_dir / "checkpoints" / LAST, weights_only=True)["train_state"]
    assert state["global_step"] == 44 + 15
    assert state["step_state"]["schedule"]["per_step"][0]["last_epoch"] == 44 + 15
    monkeypatch.setattr("mtlrec.experiment.StopRequest", StopRequest)
    run(compose_train([*TINY, *BATCH, *PRACTICES, f"resume={run_dir}"]), run_dir)
    assert_same_run(run_dir, ref_dir)
    lrs = [
        [r["lr"] for r in csv.DictReader((d / "history.csv").open())] for d in (run_dir, ref_dir)
    ]
    assert lrs[0] == lrs[1] and len(set(lrs[0])) == 2  # the cosine moved it between epochs


def test_row_adam_run_resumed_mid_epoch_with_lagging_rows_is_exact(tmp_path, monkeypatch):
    """trainer.embedding_optimizer=sparse_adam, stopped mid-epoch 2: rows the batches since the
    epoch-1 flush skipped are behind (last_step < step, nonzero moments) in the checkpoint; the
    resumed run catches them up as the uninterrupted one does, to the same bits. The interrupted
    run keeps its table in checkpoints/tables/ (a base + the rows each checkpoint changed), the
    uninterrupted one inside last.pt: both formats hold the same state."""
    from mtlrec.experiment import run

    sparse = [*TINY, *BATCH, "trainer.embedding_optimizer=sparse_adam"]
    run(compose_train([*sparse, "checkpoint.table_files_min_rows=null"]), tmp_path / "straight")
    monkeypatch.setattr(StopAfter, "k", STEPS_PER_EPOCH + 30)
    monkeypatch.setattr("mtlrec.experiment.StopRequest", StopAfter)
    run_dir = tmp_path / "run"
    sparse.append("checkpoint.table_files_min_rows=0")
    with pytest.raises(TrainingInterrupted):
        run(compose_train(sparse), run_dir)
    raw = torch.load(run_dir / "checkpoints" / LAST, weights_only=True)
    kinds = [entry["kind"] for entry in raw["table_files"]["chains"]["last"]]
    assert kinds == ["base", "delta"]  # epoch 1's end, then the stop's changed rows
    payload = load_checkpoint(run_dir / "checkpoints" / LAST)
    rows = payload["optimizer_state"]["optimizers"][1]["state"][0]
    lagging = (rows["last_step"] < int(rows["step"])) & rows["moments"].ne(0).any(1)
    assert payload["train_state"]["step"] == 29 and int(lagging.sum()) > 0
    monkeypatch.setattr("mtlrec.experiment.StopRequest", StopRequest)
    run(compose_train([*sparse, f"resume={run_dir}"]), run_dir)
    assert_same_run(run_dir, tmp_path / "straight")
