"""Exclusive run dirs and sweep dirs through the real CLI: two `mtlrec train` into one dir, a
resume of a run that is still training, a sweep into a dir another process owns, a stale lock."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml

from conftest import compose_train
from helpers.runs import TINY_CLI, mtlrec
from mtlrec.runs.records import LOCK_FILE

ENV = dict(os.environ, OMP_WAIT_POLICY="PASSIVE", HYDRA_FULL_ERROR="0")


@pytest.fixture(scope="module")
def tiny_data():
    """The tiny dataset generated once up front, so racing processes only race for the run dir."""
    from mtlrec.data.sources import resolve_dataset_dir

    cfg = compose_train(["dataset.num_rows=4000"])
    return resolve_dataset_dir(dict(cfg.dataset))


def _train(*args: str, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "mtlrec", "train", *TINY_CLI, *args],
        cwd=cwd,
        env=ENV,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _in_use(directory: Path, pid: int, hint: str) -> str:
    return f"{directory}: in use by mtlrec process {pid} ({directory / LOCK_FILE}); {hint}"


def test_two_trains_into_one_dir_at_once_one_runs_the_other_touches_nothing(tmp_path, tiny_data):
    run_dir = tmp_path / "run"
    procs = {
        seed: _train("trainer.epochs=1", f"hydra.run.dir={run_dir}", f"seed={seed}", cwd=tmp_path)
        for seed in (11, 22)
    }
    results = {seed: (p.wait(timeout=240), *p.communicate()) for seed, p in procs.items()}
    codes = sorted(code for code, _, _ in results.values())
    assert codes == [0, 1], results
    winner = next(seed for seed, (code, _, _) in results.items() if code == 0)
    loser = next(seed for seed in results if seed != winner)
    hint = "wait for it to end or pick another hydra.run.dir"
    finished = (
        f"{run_dir}: already holds a run (metrics.json/checkpoints); pick another hydra.run.dir "
        "(runs are never overwritten)"
    )
    # Which refusal the loser prints depends on the scheduler, not on mtlrec: the winner still
    # holds the dir's lock, or has already finished its run there. Both leave the dir alone.
    assert results[loser][2].strip() in (_in_use(run_dir, procs[winner].pid, hint), finished)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["seed"] == winner
    assert f"seed={winner}" in yaml.safe_load((run_dir / ".hydra" / "overrides.yaml").read_text())
    from mtlrec.training.checkpoint import load_checkpoint

    for name in ("best.pt", "last.pt"):  # written by the same process as metrics.json
        assert load_checkpoint(run_dir / "checkpoints" / name)["config"]["seed"] == winner, name
    assert sorted(p.name for p in run_dir.iterdir()) == [
        ".hydra",
        "checkpoints",
        "env.json",
        "history.csv",
        "metrics.json",
        "reliability.json",
        "train.log",
    ]  # one .hydra, no lock file left after a clean exit


def test_resuming_a_run_that_is_still_training_is_refused(tmp_path, tiny_data):
    run_dir = tmp_path / "run"
    first = _train(
        "trainer.epochs=5000", "trainer.patience=null", f"hydra.run.dir={run_dir}", cwd=tmp_path
    )
    try:
        deadline = time.time() + 120
        while not (run_dir / "history.csv").exists():  # training, past its first epoch
            assert first.poll() is None and time.time() < deadline, first.communicate()
            time.sleep(0.2)
        before = sorted(p.name for p in (run_dir / ".hydra").iterdir())
        resume = mtlrec("train", f"resume={run_dir}", cwd=tmp_path)
        assert resume.returncode == 1
        hint = "wait for that run to end (or stop it) before resuming it"
        assert resume.stderr.strip() == _in_use(run_dir, first.pid, hint)
        assert sorted(p.name for p in (run_dir / ".hydra").iterdir()) == before  # no resume-*
        assert json.loads((run_dir / "metrics.json").read_text())["status"] == "running"
    finally:
        first.send_signal(signal.SIGINT)
        first.wait(timeout=120)
    assert json.loads((run_dir / "metrics.json").read_text())["status"] == "interrupted"
    assert not (run_dir / LOCK_FILE).exists()


HOLD = textwrap.dedent(
    """
    import sys
    from mtlrec.runs.lock import claim
    claim(sys.argv[1])
    print("held", flush=True)
    sys.stdin.read()
    """
)


def test_a_sweep_into_a_dir_another_process_owns_is_refused(tmp_path):
    sweep_dir = tmp_path / "sweep"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(sweep_dir)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline() == "held\n"
        result = mtlrec("train", "-m", f"hydra.sweep.dir={sweep_dir}", "seed=1,2", cwd=tmp_path)
        hint = "wait for that sweep to end or pick another hydra.sweep.dir"
        assert result.returncode == 1
        assert result.stderr.strip().splitlines()[-1] == _in_use(sweep_dir, holder.pid, hint)
        assert os.listdir(sweep_dir) == [LOCK_FILE]  # the holder's; no job dir, no multirun.yaml
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)


def test_a_stale_lock_of_a_dead_process_is_taken_over_with_a_warning(tmp_path, tiny_data):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / LOCK_FILE).write_text(f"{dead.pid}\n")  # left by a killed run, nobody holds it
    result = mtlrec("train", "trainer.epochs=1", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    warning = (
        f"warning: {run_dir}: took over the lock of mtlrec process {dead.pid}, which is no "
        "longer running (killed?); its files are left as they are"
    )
    assert result.stderr.splitlines()[0] == warning
    assert json.loads((run_dir / "metrics.json").read_text())["status"] == "completed"
    assert not (run_dir / LOCK_FILE).exists()
