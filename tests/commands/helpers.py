"""Running the real `mtlrec` command in the tests of tests/commands/."""

from __future__ import annotations

import os
import subprocess
import sys
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
