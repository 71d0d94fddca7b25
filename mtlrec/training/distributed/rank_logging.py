"""Logging of ranks > 0: only library warnings, prefixed `[rank r]`; rank 0 logs for the run.

The run's own messages and errors reach the user once, through rank 0 or the launching process.
"""

from __future__ import annotations

import logging
import sys

FILE_FORMAT = "[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"  # conf/hydra/job_logging


class OtherRankFilter(logging.Filter):
    """Ranks > 0 show only warnings of libraries (torch, ...), never mtlrec's own records."""

    def filter(self, record: logging.LogRecord) -> bool:
        own = record.name == "mtlrec" or record.name.startswith("mtlrec.")
        return record.levelno == logging.WARNING and not own


def add_rank_console(rank: int) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"[rank {rank}] %(message)s"))
    handler.addFilter(OtherRankFilter())
    logging.getLogger().addHandler(handler)


def quiet_other_ranks(rank: int) -> None:
    """Under torchrun Hydra set up train.log + console logging on every rank: keep rank 0's only."""
    if rank == 0:
        return
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    add_rank_console(rank)


def worker_logging(rank: int, log_file: str | None) -> None:
    """A spawned worker starts with no logging config: rank 0 appends to the parent's train.log."""
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    if rank != 0:
        add_rank_console(rank)
        return
    console = logging.StreamHandler(sys.stdout)
    console.setFormatter(logging.Formatter("%(message)s"))
    root.addHandler(console)
    if log_file:
        file = logging.FileHandler(log_file, mode="a")
        file.setFormatter(logging.Formatter(FILE_FORMAT))
        root.addHandler(file)


def root_log_file() -> str | None:
    """The launching process's train.log (Hydra's file handler), handed to rank 0."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            return handler.baseFilename
    return None
