"""Artifacts bound to their run (mtlrec/training/binding.py) and a run-dir lock that deleting
RUN/.mtlrec.lock does not defeat (mtlrec/runs/lock.py), through the real `mtlrec` command."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import TINY, run_training
from helpers.cli import env, lines, mtlrec
from mtlrec.errors import MtlrecError
from mtlrec.training.binding import CONFIG_HASH_KEY, DATASET_KEY, config_hash


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """An ESMM run and an MMoE run on the same tiny dataset (1 epoch each)."""
    tmp = tmp_path_factory.mktemp("binding")
    esmm, _ = run_training(tmp, ["model=esmm", "trainer.epochs=1"], "esmm")
    mmoe, _ = run_training(tmp, ["model=mmoe", "trainer.epochs=1"], "mmoe")
    return esmm, mmoe


def _foreign(two_runs, tmp_path):
    """A copy of the MMoE run whose checkpoints were replaced by the ESMM run's."""
    esmm, mmoe = two_runs
    run = tmp_path / "mmoe"
    shutil.copytree(mmoe, run)
    for name in ("best.pt", "last.pt"):
        shutil.copyfile(esmm / "checkpoints" / name, run / "checkpoints" / name)
    esmm_hash = json.loads((esmm / "metrics.json").read_text())["config_hash"]
    mmoe_hash = json.loads((run / "metrics.json").read_text())["config_hash"]
    return run, esmm_hash, mmoe_hash


def test_the_run_records_the_hash_its_checkpoints_carry(two_runs):
    esmm, _ = two_runs
    info = json.loads((esmm / "metrics.json").read_text())
    payload = torch.load(esmm / "checkpoints" / "best.pt", weights_only=True)
    assert info["model"] == payload["model_name"] == "esmm"
    assert info["config_hash"] == payload[CONFIG_HASH_KEY] == config_hash(payload["config"])
    assert payload[DATASET_KEY].startswith("fp1:") and len(payload[DATASET_KEY]) == 4 + 64


def test_a_checkpoint_of_another_run_is_refused_by_evaluate_export_predict(two_runs, tmp_path):
    run, esmm_hash, mmoe_hash = _foreign(two_runs, tmp_path)
    ckpt = run / "checkpoints" / "best.pt"
    line = (
        f"{ckpt}: checkpoint of model 'esmm' with config {esmm_hash[:12]}, but {run} is a run of "
        f"model 'mmoe' with config {mmoe_hash[:12]}; it belongs to another run: use this run's "
        "own checkpoint, or the run that wrote it"
    )
    out = mtlrec("evaluate", str(run), cwd=tmp_path)
    assert (out.returncode, lines(out.stderr)) == (1, [f"mtlrec evaluate: error: {line}"])
    from mtlrec.inference import export, predict

    with pytest.raises(MtlrecError) as info:
        export(run, "torchscript")
    assert str(info.value) == line and not (run / "export").exists()
    data = torch.load(ckpt, weights_only=True)["config"]["dataset"]["path"]
    with pytest.raises(MtlrecError) as info:
        predict(run, f"{data}/test.parquet", tmp_path / "p.parquet")
    assert str(info.value) == line and not (tmp_path / "p.parquet").exists()


def test_a_resume_from_another_runs_checkpoint_is_refused(two_runs, tmp_path):
    run, esmm_hash, mmoe_hash = _foreign(two_runs, tmp_path)
    from conftest import compose_train
    from mtlrec.experiment import run as run_experiment

    before = {p.name: p.read_bytes() for p in (run / "checkpoints").iterdir()}
    cfg = compose_train([*TINY, "model=mmoe", "trainer.epochs=2", f"resume={run}"])
    with pytest.raises(MtlrecError) as info:  # (the CLI's resume: scripts/bad_inputs.py)
        run_experiment(cfg, run)
    assert str(info.value) == (
        f"{run / 'checkpoints' / 'last.pt'}: checkpoint of model 'esmm' with config "
        f"{esmm_hash[:12]}, but {run} is a run of model 'mmoe' with config {mmoe_hash[:12]}; it "
        "belongs to another run: use this run's own checkpoint, or the run that wrote it"
    )
    assert {p.name: p.read_bytes() for p in (run / "checkpoints").iterdir()} == before


def test_a_checkpoint_from_before_the_binding_is_used_after_one_warning(two_runs, tmp_path):
    run = tmp_path / "old"
    shutil.copytree(two_runs[0], run)
    ckpt = run / "checkpoints" / "best.pt"
    payload = torch.load(ckpt, weights_only=True)
    for key in (CONFIG_HASH_KEY, DATASET_KEY):
        payload.pop(key)
    torch.save(payload, ckpt)
    info = json.loads((run / "metrics.json").read_text())
    info.pop("config_hash")
    (run / "metrics.json").write_text(json.dumps(info))
    out = mtlrec("evaluate", str(run), cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert lines(out.stderr) == [
        f"warning: {ckpt}: the checkpoint records no config hash (written before mtlrec bound "
        "checkpoints to their run and data), so it is not checked against them; it is used as it is"
    ]
    assert "test/ctr_auc" in out.stdout


def _wait_until(condition, proc, what, seconds=180):
    deadline = time.monotonic() + seconds
    while not condition():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, f"no {what} within {seconds} s"
        time.sleep(0.01)


def test_deleting_the_lock_file_does_not_let_a_second_trainer_in(tmp_path):
    """The run is held inside its first checkpoint write (fault hook) while its lock file is
    deleted and a resume of the same dir is started: the resume is refused, the run goes on."""
    run, marker = tmp_path / "run", tmp_path / "paused"
    args = [*TINY, "trainer.epochs=1", "trainer.batch_size=32", "checkpoint.every_n_steps=5"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "mtlrec", "train", *args, f"hydra.run.dir={run}"],
        cwd=tmp_path,
        env=env(MTLREC_FAULT_PAUSE_WRITE=f"last.pt:{marker}"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_until(marker.exists, proc, "paused checkpoint write")
        (run / ".mtlrec.lock").unlink()
        out = mtlrec("train", f"resume={run}", cwd=tmp_path)
        assert out.returncode == 1
        # (no last.pt yet: the resume would start the run again, into the dir it does not own)
        assert lines(out.stderr) == [
            f"{run}: in use by another mtlrec process ({run / '.mtlrec.lock'}); wait for it to "
            "end or pick another hydra.run.dir"
        ]
        proc.send_signal(signal.SIGTERM)  # stop after the write, with a resumable last.pt
        marker.unlink()
        _, err = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, err
    assert json.loads((run / "metrics.json").read_text())["status"] == "interrupted"
