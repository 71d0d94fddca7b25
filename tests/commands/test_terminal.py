"""Under a real pseudo-terminal: progress bars and log lines never share a line; off a terminal
the log lines are plain (no colour codes)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from helpers.cli import BAR, ESCAPES, LOG_LINE, collisions, env, run_in_pty, screen_segments

JOB_LOGGING = Path(__file__).resolve().parents[2] / "conf" / "hydra" / "job_logging" / "mtlrec.yaml"
LOG_DURING_A_BAR = r"""
import logging, logging.config, sys, time, yaml
import rich
from rich.progress import BarColumn, Progress, TextColumn

conf = yaml.safe_load(open(sys.argv[1]))
conf["handlers"]["file"]["filename"] = sys.argv[2]
logging.config.dictConfig(conf)
log = logging.getLogger("mtlrec.experiment")
# The bar on rich's shared console, as the trainer draws it.
with Progress(TextColumn("epoch 1"), BarColumn(), console=rich.get_console(), transient=True) as p:
    task = p.add_task("epoch 1", total=40)
    for step in range(40):
        p.update(task, advance=1)
        p.refresh()
        if step % 8 == 4:
            log.info("epoch %d/5  train/loss 0.25358  val/mean_auc 0.80114", step)
        time.sleep(0.01)
"""


def test_log_lines_during_a_bar_are_printed_above_it(tmp_path):
    """Deterministic: log records arrive while the bar is on screen (mid-epoch)."""
    code, out = run_in_pty(
        [sys.executable, "-c", LOG_DURING_A_BAR, str(JOB_LOGGING), str(tmp_path / "t.log")],
        tmp_path,
    )
    assert code == 0, out
    assert BAR in out  # the bar was drawn ...
    logged = [s for s in screen_segments(out) if LOG_LINE.search(s)]
    assert len(logged) >= 5  # ... and every log line reached the terminal
    assert collisions(out) == []


def test_mtlrec_train_under_a_terminal_never_puts_a_log_line_on_a_bar(tmp_path):
    mtlrec = Path(sys.executable).parent / "mtlrec"
    if not mtlrec.exists():
        pytest.skip("needs the installed mtlrec script")
    args = ["dataset.num_rows=20000", "trainer.batch_size=32", "trainer.epochs=2"]
    args += ["trainer.num_threads=1", "device=cpu", "trainer.progress=true"]
    code, out = run_in_pty(
        [str(mtlrec), "train", *args, f"hydra.run.dir={tmp_path / 'run'}"], tmp_path
    )
    assert code == 0, out[-2000:]
    assert BAR in out and "epoch 2/2  train/loss" in ESCAPES.sub("", out)
    assert collisions(out) == []


def test_log_lines_are_plain_off_a_terminal(tmp_path):
    child = LOG_DURING_A_BAR.replace('TextColumn("epoch 1"), ', "")
    out = subprocess.run(
        [sys.executable, "-c", child, str(JOB_LOGGING), str(tmp_path / "t.log")],
        capture_output=True,
        text=True,
        env=env(),
    )
    assert out.returncode == 0, out.stderr
    assert [ln for ln in out.stdout.splitlines() if ln] == [
        f"epoch {s}/5  train/loss 0.25358  val/mean_auc 0.80114" for s in (4, 12, 20, 28, 36)
    ]
