"""SIGTERM to the process of a sweep (real subprocesses, bounded): a joblib sweep stops its
workers, leaves no process behind and prints the report; a sequential sweep says the remaining
jobs were not run. Both exit 143 and leave resumable, `interrupted` job dirs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers.runs import TINY_CLI
from mtlrec.runs.lock import owner_pid
from mtlrec.sweeps.stop import children

LONG = ["trainer.epochs=5000", "trainer.patience=null"]  # stopped by the test long before


def _start(tmp_path: Path, *args: str) -> tuple[subprocess.Popen, Path]:
    err = tmp_path / "stderr.txt"
    proc = subprocess.Popen(
        [sys.executable, "-m", "mtlrec", "train", "-m", *TINY_CLI, *LONG, *args],
        cwd=tmp_path,
        env=dict(os.environ, OMP_WAIT_POLICY="PASSIVE", HYDRA_FULL_ERROR="0"),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=err.open("w"),
        start_new_session=True,  # a SIGTERM to it alone, as `kill PID` or a scheduler sends
    )
    return proc, err


def _wait_for(paths: list[Path], proc: subprocess.Popen, err: Path, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while not all(p.exists() for p in paths):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"the jobs did not start training: {err.read_text()[-3000:]}")
        time.sleep(0.2)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _interrupted(job: Path) -> None:
    assert json.loads((job / "metrics.json").read_text())["status"] == "interrupted"
    assert (job / "checkpoints" / "last.pt").is_file()  # resumable


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="the process tree is read from /proc")
def test_sigterm_to_a_joblib_sweep_stops_every_worker_and_reports(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    sweep = tmp_path / "sweep"
    proc, err = _start(
        tmp_path,
        "launcher=joblib",
        "hydra.launcher.n_jobs=2",
        "seed=1,2,3",
        f"hydra.sweep.dir={sweep}",
    )
    _wait_for([sweep / "0" / "history.csv", sweep / "1" / "history.csv"], proc, err)
    tree = children(proc.pid)
    assert len(tree) >= 2  # the two workers (and loky's helpers)
    # The sweep's process owns the sweep dir; each worker owns the job dir it runs.
    assert owner_pid(sweep) == proc.pid
    assert {owner_pid(sweep / "0"), owner_pid(sweep / "1")} <= set(tree)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 143
    lines = err.read_text().splitlines()
    assert lines[-4:] == [
        f"mtlrec train: sweep stopped by SIGTERM: {sweep}: 0 of 3 job(s) completed",
        f"  {sweep / '0'}: interrupted; continue with: mtlrec train resume={sweep / '0'}",
        f"  {sweep / '1'}: interrupted; continue with: mtlrec train resume={sweep / '1'}",
        "  1 job(s) were not started",
    ]
    _interrupted(sweep / "0")
    _interrupted(sweep / "1")
    assert not (sweep / "2").exists()
    deadline = time.monotonic() + 10
    while any(_alive(pid) for pid in tree) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert [pid for pid in tree if _alive(pid)] == []  # no orphans
    assert not (sweep / ".mtlrec.lock").exists()


def test_sigterm_to_a_sequential_sweep_says_the_remaining_jobs_were_not_run(tmp_path):
    sweep = tmp_path / "sweep"
    proc, err = _start(tmp_path, "seed=1,2", f"hydra.sweep.dir={sweep}")
    _wait_for([sweep / "0" / "history.csv"], proc, err)
    assert owner_pid(sweep) == owner_pid(sweep / "0") == proc.pid  # jobs run in-process
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 143
    last = err.read_text().splitlines()[-1]
    assert last.startswith(f"mtlrec train: sweep stopped: {sweep / '0'}: ")
    assert last.endswith("; the remaining jobs were not run")
    _interrupted(sweep / "0")
    assert not (sweep / "1").exists()
