"""Two signals in the middle of a checkpoint write: the write completes, then the run stops with
130/143 and a resumable last.pt. The signals arrive inside the write deterministically: the
fault hook MTLREC_FAULT_PAUSE_WRITE=last.pt:MARKER holds the write until MARKER is removed and
reports in MARKER how many signals the process has received."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import TINY
from helpers.cli import env


def _default_signals() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _wait_until(condition, proc: subprocess.Popen, what: str, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, f"no {what} within {seconds} s"
        time.sleep(0.005)


def _reads(marker: Path, text: str):
    def check() -> bool:
        try:
            return marker.read_text() == text
        except FileNotFoundError:
            return False

    return check


@pytest.mark.parametrize(
    ("signals", "code"),
    [((signal.SIGINT, signal.SIGINT), 130), ((signal.SIGTERM, signal.SIGTERM), 143)],
)
def test_a_second_signal_during_a_checkpoint_write_waits_for_it(tmp_path, signals, code):
    run_dir, marker = tmp_path / "run", tmp_path / "paused"
    args = ["train", *TINY, "trainer.batch_size=32", "checkpoint.every_n_steps=5"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "mtlrec", *args, f"hydra.run.dir={run_dir}"],
        cwd=tmp_path,
        env=env(MTLREC_FAULT_PAUSE_WRITE=f"last.pt:{marker}"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_default_signals,
    )
    try:
        _wait_until(_reads(marker, "0"), proc, "paused checkpoint write")
        for count, signum in enumerate(signals, 1):
            proc.send_signal(signum)
            _wait_until(_reads(marker, str(count)), proc, f"signal {count} handled")
        marker.unlink()  # the write goes on
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == code, err
    assert "Traceback" not in out + err
    assert "stopped at once by a second signal" in out + err
    ckpt = run_dir / "checkpoints" / "last.pt"
    payload = torch.load(ckpt, map_location="cpu", weights_only=True)  # complete, not torn
    assert payload["train_state"]["step"] == 5
    assert not list(ckpt.parent.glob(".*.tmp"))
    assert json.loads((run_dir / "metrics.json").read_text())["status"] == "interrupted"
