"""A closed pipe (`mtlrec compare ... | head -1`) ends mtlrec quietly.

Python ignores SIGPIPE, so a write after the reader has gone raises BrokenPipeError wherever the
write happens: in our own print, inside Hydra (`--cfg job`, `-sc install=bash`; Hydra would print
the traceback), or in a log handler during training. `PipeGuard` stands in for sys.stdout: from
the first broken write on, output is dropped (the file descriptor points at /dev/null) and the
command carries on; `mtlrec` then exits 141 (128 + SIGPIPE), the status a shell shows for a
writer that lost its reader.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any, TextIO


class PipeGuard:
    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.broken = False

    def write(self, text: str) -> int:
        try:
            return self.stream.write(text)
        except BrokenPipeError:
            self._drop_output()
            return len(text)

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        try:
            self.stream.flush()
        except BrokenPipeError:
            self._drop_output()

    def _drop_output(self) -> None:
        self.broken = True
        try:
            fd = self.stream.fileno()
        except (AttributeError, OSError, ValueError):  # not a real file (a test's capture)
            return
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, fd)
        os.close(devnull)
        with contextlib.suppress(OSError):  # what is still buffered goes to /dev/null now
            self.stream.flush()

    def __getattr__(self, name: str) -> Any:  # isatty, fileno, encoding, buffer, ...
        return getattr(self.stream, name)
