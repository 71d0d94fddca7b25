"""`mtlrec train resume=SWEEP_DIR` on a real 3-job sweep stopped by SIGTERM during job 2: job 1
completed (skipped), job 2 interrupted with a checkpoint (resumed), job 3 never started (started),
one report line per job; the resumed job equals the same run uninterrupted."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

from helpers.runs import TINY_CLI, mtlrec

ENV = dict(os.environ, OMP_WAIT_POLICY="PASSIVE", HYDRA_FULL_ERROR="0")
ARGS = [
    *(a for a in TINY_CLI if "batch_size" not in a),
    "trainer.batch_size=32",
    "checkpoint.every_n_steps=5",
    "trainer.epochs=2",
]


def _default_signals() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _interrupted_sweep(sweep: Path, cwd: Path) -> str:
    proc = subprocess.Popen(
        [sys.executable, "-m", "mtlrec", "train", "-m", *ARGS, "seed=1,2,3",
         f"hydra.sweep.dir={sweep}"],
        cwd=cwd, env=ENV, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, preexec_fn=_default_signals,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 240
        while not (sweep / "1" / "checkpoints" / "last.pt").exists():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.005)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, err
    assert "the remaining jobs were not run" in err
    return out


def _info(path: Path) -> dict:
    return json.loads((path / "metrics.json").read_text())


def test_resume_a_sweep_dir_finishes_each_unfinished_job(tmp_path):
    sweep = tmp_path / "sweep"
    out = _interrupted_sweep(sweep, tmp_path)
    given = " ".join(ARGS)
    assert [ln for ln in out.splitlines() if ln.startswith("sweep job")] == [
        f"sweep job 1/3 ({sweep / '0'}): {given} seed=1",
        f"sweep job 2/3 ({sweep / '1'}): {given} seed=2",
    ]
    assert _info(sweep / "0")["status"] == "completed"
    assert _info(sweep / "1")["status"] == "interrupted"
    assert not (sweep / "2").exists()
    job0 = (sweep / "0" / "metrics.json").read_bytes()

    resumed = mtlrec("train", f"resume={sweep}", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    err = resumed.stderr.splitlines()
    report = err[err.index(f"sweep {sweep}: 3 of 3 jobs completed") :]
    assert report == [
        f"sweep {sweep}: 3 of 3 jobs completed",
        f"  sweep job 1/3 (seed=1) {sweep / '0'}: completed before, skipped",
        f"  sweep job 2/3 (seed=2) {sweep / '1'}: resumed, completed",
        f"  sweep job 3/3 (seed=3) {sweep / '2'}: started, completed",
    ]
    assert f"sweep job 2/3 (seed=2): resuming {sweep / '1'}" in err
    assert f"sweep job 3/3 (seed=3): starting {sweep / '2'}" in err
    assert (sweep / "0" / "metrics.json").read_bytes() == job0  # the completed job: untouched
    started = yaml.safe_load((sweep / "2" / ".hydra" / "overrides.yaml").read_text())
    assert started == [*ARGS, "seed=3"]  # the job's own overrides, as the sweep gave them
    assert yaml.safe_load((sweep / "0" / ".hydra" / "overrides.yaml").read_text()) == [
        *ARGS,
        "seed=1",
    ]

    # The resumed job equals job 2 run without interruption.
    alone = tmp_path / "alone"
    done = mtlrec("train", *ARGS, "seed=2", f"hydra.run.dir={alone}", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert _info(sweep / "1")["metrics"] == _info(alone)["metrics"]
    assert _info(sweep / "2")["seed"] == 3 and _info(sweep / "2")["epochs_run"] == 2

    again = mtlrec("train", f"resume={sweep}", cwd=tmp_path)
    assert again.returncode == 0
    assert again.stderr.splitlines()[-3:] == [
        f"  sweep job {k}/3 (seed={k}) {sweep / str(k - 1)}: completed before, skipped"
        for k in (1, 2, 3)
    ]


def test_resume_of_a_sweep_dir_takes_no_other_argument(tmp_path):
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    (sweep / "multirun.yaml").write_text("hydra: {}\n")
    out = mtlrec("train", f"resume={sweep}", "trainer.epochs=5", cwd=tmp_path)
    assert out.returncode == 1
    assert out.stderr.splitlines() == [
        f"mtlrec train: error: resume={sweep} resumes a sweep as it was: give no other "
        "arguments (['trainer.epochs=5'])"
    ]
