"""The console handler of a training job's logging (conf/hydra/job_logging/mtlrec.yaml).

On a terminal, log lines go through `rich.logging.RichHandler` on rich's process-wide console
(`rich.get_console()`), the console the progress bars are drawn on, so rich prints every log
line above a live bar and the two never share a line. Anywhere else (a file, a pipe, CI) the
lines are plain `%(message)s` lines without colour or wrapping, as before.
"""

from __future__ import annotations

import logging
from typing import TextIO


def console_handler(stream: TextIO) -> logging.Handler:
    """RichHandler on rich's shared console when `stream` is a terminal, else a StreamHandler.

    A record logged with `extra={"console": False}` goes to the log file only (what the console
    shows another way, e.g. the metrics table).
    """
    handler: logging.Handler
    if _is_terminal(stream):
        import rich
        from rich.logging import RichHandler

        handler = RichHandler(
            console=rich.get_console(),
            show_time=False,
            show_level=False,
            show_path=False,
            markup=False,
            rich_tracebacks=False,
        )
    else:
        handler = logging.StreamHandler(stream)
        handler.setFormatter(logging.Formatter("%(message)s"))
    handler.addFilter(lambda record: getattr(record, "console", True))
    return handler


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
