"""Signals never assume a disposition: each test sets the one it needs in a child process, so the
suite passes started in the foreground, as `pytest &` (SIGINT ignored) or under CI."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import TINY
from helpers.cli import env

# Run in a fresh interpreter, after it set SIGINT/SIGTERM to what the test asks for.
DISPOSITIONS = r"""
import signal, sys
from mtlrec.training.signals import StopRequest

names = {'SIG_DFL': signal.SIG_DFL, 'SIG_IGN': signal.SIG_IGN,
         'default_int_handler': signal.default_int_handler}
def mine(signum, frame):
    pass
names['mine'] = mine
def show(h):
    return next((k for k, v in names.items() if v is h), 'other')

start = sys.argv[1]
for s in (signal.SIGINT, signal.SIGTERM):
    signal.signal(s, names[start])
stop = StopRequest()
with stop:
    during = [show(signal.getsignal(s)) for s in (signal.SIGINT, signal.SIGTERM)]
    assert during == ['other', 'other'], during  # the two-stage handler
after = [show(signal.getsignal(s)) for s in (signal.SIGINT, signal.SIGTERM)]
# The second signal restores at once, before the context ends.
with StopRequest() as stop2:
    stop2._handle(signal.SIGTERM, None)
    try:
        stop2._handle(signal.SIGTERM, None)
    except KeyboardInterrupt:
        pass
    second = [show(signal.getsignal(s)) for s in (signal.SIGINT, signal.SIGTERM)]
print(after, second)
"""


@pytest.mark.parametrize("start", ["SIG_DFL", "SIG_IGN", "default_int_handler", "mine"])
def test_stop_request_restores_whatever_disposition_it_found(start):
    out = subprocess.run(
        [sys.executable, "-c", DISPOSITIONS, start], capture_output=True, text=True, env=env()
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"{[start, start]} {[start, start]}"


RUN_WITH_SIGINT_IGNORED = r"""
import signal, sys
signal.signal(signal.SIGINT, signal.SIG_IGN)  # as a background job of a script finds it
from hydra import compose, initialize_config_module
from mtlrec.experiment import run

with initialize_config_module(config_module="mtlrec.conf", version_base="1.3"):
    cfg = compose(config_name="train", overrides=sys.argv[2:])
run(cfg, sys.argv[1])
print(signal.getsignal(signal.SIGINT) is signal.SIG_IGN,
      signal.getsignal(signal.SIGTERM) is signal.SIG_DFL)
"""


def test_a_run_restores_an_ignored_sigint(tmp_path):
    run_dir = tmp_path / "run"
    out = subprocess.run(
        [sys.executable, "-c", RUN_WITH_SIGINT_IGNORED, str(run_dir), *TINY, "trainer.epochs=1"],
        capture_output=True,
        text=True,
        env=env(),
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "True True"
    assert json.loads((run_dir / "metrics.json").read_text())["status"] == "completed"


def _default_signals() -> None:
    """preexec_fn: the child starts with SIGINT/SIGTERM at their defaults, whatever ours are."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _catches(pid: int, signum: int) -> bool:
    """Whether process `pid` has a handler for `signum` (Linux: SigCgt in /proc/PID/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) >> (signum - 1) & 1)
    return False


def _start(args: list[str], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "mtlrec", *args],
        cwd=cwd,
        env=env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_default_signals,
    )


def _wait_for(condition, proc: subprocess.Popen, what: str, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, f"no {what} within {seconds} s"
        time.sleep(0.005)


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_during_startup_exits_128_plus_n_with_one_line(tmp_path, signum):
    """Sent as soon as mtlrec catches SIGTERM (its start-up handlers are in place): it is still
    importing and composing the config, seconds before the training loop's own handlers."""
    proc = _start(["train", *TINY, f"hydra.run.dir={tmp_path / 'run'}"], tmp_path)
    try:
        _wait_for(lambda: _catches(proc.pid, signal.SIGTERM), proc, "SIGTERM handler", 60)
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signum, err
    assert err == f"mtlrec: interrupted ({signal.Signals(signum).name})\n" and out == ""
    assert not (tmp_path / "run").exists()  # stopped before the run dir was made


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
def test_a_second_sigterm_during_training_exits_143(tmp_path):
    run_dir = tmp_path / "run"
    args = ["train", *TINY, "trainer.batch_size=32", "checkpoint.every_n_steps=5"]
    proc = _start([*args, f"hydra.run.dir={run_dir}"], tmp_path)
    try:
        _wait_for((run_dir / "checkpoints" / "last.pt").exists, proc, "checkpoint")
        proc.send_signal(signal.SIGTERM)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, out + err
    assert "Traceback" not in out + err
    assert json.loads((run_dir / "metrics.json").read_text())["status"] == "interrupted"
