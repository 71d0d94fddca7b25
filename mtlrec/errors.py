"""The one exception type for mistakes a user can make (bad config, bad data, missing file), and
how its one line reaches the user exactly once.

MtlrecError derives from Hydra's CompactHydraException so that, should one escape a Hydra job,
Hydra prints just the message (no traceback unless HYDRA_FULL_ERROR=1) and exits with status 1.
`mtlrec` itself catches it everywhere else and prints `mtlrec <command>: error: <message>`.

Inside a run the message is logged (console and train.log). The console handler of the job's
logging (conf/hydra/job_logging/mtlrec.yaml) marks an error it printed as `reported`, so the
command that catches it afterwards does not print it a second time.
"""

from __future__ import annotations

import logging

from hydra.errors import CompactHydraException


class MtlrecError(CompactHydraException):
    """A user-facing error: its message names the file/column/key/value and what to do."""

    reported: bool = False  # True once a log handler has shown it to the user


class UsageError(MtlrecError):
    """A wrong command line (an unknown dataset or key in an override): `mtlrec` exits 2 for it,
    as argparse does for a wrong option, instead of 1."""


def reported(error: BaseException | None) -> bool:
    return bool(getattr(error, "reported", False))


class MarkReported(logging.Filter):
    """Log-handler filter: an MtlrecError passed as a message argument (`log.error("%s", e)`) is
    marked `reported` when the handler shows it. Lets every record through."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args if isinstance(record.args, tuple) else ()
        for arg in (*args, record.msg):
            if isinstance(arg, MtlrecError):
                arg.reported = True
        return True


class LevelRange(logging.Filter):
    """Log-handler filter letting through records with `low <= level < high` (names or numbers):
    the console sends errors to stderr and everything else to stdout."""

    def __init__(self, low: int | str = 0, high: int | str = 100) -> None:
        super().__init__()
        self.low = logging._checkLevel(low)  # type: ignore[attr-defined]
        self.high = logging._checkLevel(high)  # type: ignore[attr-defined]

    def filter(self, record: logging.LogRecord) -> bool:
        return self.low <= record.levelno < self.high
