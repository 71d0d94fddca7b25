"""A training run on an 80-column terminal (a pseudo-terminal, through the real CLI): no line
wider than the terminal, the epoch line broken between its fields (never inside one), the
summary naming the best epoch, no `test:` line repeating the table; progress bars leave room for
the `^C` a terminal echoes, so Ctrl-C erases them instead of leaving one frozen on the screen."""

from __future__ import annotations

import fcntl
import io
import os
import pty
import re
import struct
import subprocess
import sys
import termios

import pytest

from conftest import TINY
from helpers.cli import env

CSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07")


def run_in_pty(args: list[str], cwd, columns: int = 80) -> tuple[int, list[str]]:
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, columns, 0, 0))
    proc = subprocess.Popen(
        [sys.executable, "-m", "mtlrec", *args],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        cwd=cwd,
        env=env(COLUMNS=str(columns), LINES="40", TERM="xterm"),
        close_fds=True,
    )
    os.close(slave)
    raw = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        raw += chunk
    os.close(master)
    code = proc.wait(timeout=300)
    text = CSI.sub("", raw.decode("utf-8", "replace"))
    return code, [part for line in text.split("\n") for part in line.split("\r")]


def test_a_run_at_80_columns_breaks_lines_between_fields(tmp_path):
    code, lines = run_in_pty(["train", *TINY, f"hydra.run.dir={tmp_path / 'run'}"], tmp_path)
    assert code == 0, "\n".join(lines)
    assert max(len(line.rstrip()) for line in lines) <= 80
    speed = re.compile(r"^ *(epoch \d/2  .*)?\(\d+\.\ds, [\d,]+ samples/s\)$")
    epoch_ends = [line.rstrip() for line in lines if "samples/s)" in line]
    assert len(epoch_ends) == 2 and all(speed.match(line) for line in epoch_ends), epoch_ends
    assert any(re.search(r"metrics at the best epoch \(\d of 2\)", line) for line in lines)
    assert not any(line.startswith("test:") for line in lines)


@pytest.mark.parametrize("width", [80, 60])
def test_progress_bars_leave_room_for_the_echoed_ctrl_c(width):
    from rich.console import Console

    from mtlrec.training.train_epoch import make_progress

    screen = io.StringIO()
    console = Console(file=screen, width=width, force_terminal=True, color_system=None)
    progress = make_progress(console, True, True)
    with progress:
        bar = progress.add_task("epoch 12", total=273, completed=195, loss="0.3238", speed="7,387")
        progress.refresh()
        progress.update(bar, completed=210)
        progress.refresh()
    drawn = [part for part in CSI.sub("", screen.getvalue()).split("\r") if "━" in part]
    assert drawn and max(len(part.rstrip("\n")) for part in drawn) == width - 2
