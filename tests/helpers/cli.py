"""Running the real `mtlrec` command in the tests of tests/commands/."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import struct
import subprocess
import sys
import termios
from pathlib import Path


def env(**extra: str) -> dict[str, str]:
    """The test session's environment without HYDRA_FULL_ERROR (users don't set it)."""
    out = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    out.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    out.update(extra)
    return out


def mtlrec(*args: str, cwd: Path, timeout: int = 180, **popen) -> subprocess.CompletedProcess:
    """`python -m mtlrec ARGS` in a fresh process (the same as the `mtlrec` script)."""
    return subprocess.run(
        [sys.executable, "-m", "mtlrec", *args],
        cwd=cwd,
        env=popen.pop("env", None) or env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        **popen,
    )


def lines(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln.strip()]


# -- pseudo-terminals -----------------------------------------------------------------------------
BAR = "━"
LOG_LINE = re.compile(r"epoch \d+/\d+|train/loss|val/mean_auc|run dir:")
ESCAPES = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07")


def run_in_pty(argv: list[str], cwd: Path, columns: int = 120) -> tuple[int, str]:
    """Run argv with a pseudo-terminal (`columns` wide) as stdin/stdout/stderr; (status, output)."""
    pid, fd = pty.fork()
    if pid == 0:  # the child: a terminal of a known size, then the command
        try:
            fcntl.ioctl(1, termios.TIOCSWINSZ, struct.pack("HHHH", 40, columns, 0, 0))
            os.chdir(cwd)
            os.execve(argv[0], argv, env(TERM="xterm-256color", COLUMNS=str(columns)))
        finally:
            os._exit(127)
    chunks = []
    while True:
        try:
            data = os.read(fd, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(fd)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), b"".join(chunks).decode("utf-8", "replace")


def screen_segments(output: str) -> list[str]:
    """What can end up on one terminal line: text between newlines and carriage returns, with the
    escape sequences (colours, cursor moves, erase-line) taken out."""
    text = ESCAPES.sub("", output)
    return [seg for line in text.split("\n") for seg in line.split("\r")]


def collisions(output: str) -> list[str]:
    return [s for s in screen_segments(output) if BAR in s and LOG_LINE.search(s)]
