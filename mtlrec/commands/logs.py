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

        handler = FieldWrapHandler(
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


FIELD_GAP = "  "  # log lines separate their fields by two spaces (`epoch 1/5  train/loss ...`)


def pack_fields(message: str, width: int) -> str:
    """A line wider than the terminal broken between its fields (never inside one: `(0.8s,
    3,593 samples/s)` stays whole), continuation lines indented; a line without such fields is
    left to rich, which breaks prose between words."""
    if len(message) <= width or FIELD_GAP not in message or "\n" in message:
        return message
    lines = [""]
    for field in (f for f in message.split(FIELD_GAP) if f):
        joined = f"{lines[-1]}{FIELD_GAP}{field}" if lines[-1].strip() else lines[-1] + field
        if len(joined) <= width or not lines[-1].strip():
            lines[-1] = joined
        else:
            lines.append("  " + field)
    return "\n".join(lines)


def _field_wrap_handler():
    from rich.logging import RichHandler

    class _FieldWrapHandler(RichHandler):
        def render_message(self, record, message):
            return super().render_message(record, pack_fields(message, self.console.width))

    return _FieldWrapHandler


def FieldWrapHandler(**kwargs):  # noqa: N802  (a class, built when rich is imported)
    """RichHandler whose lines break between fields (pack_fields) at the console's width."""
    return _field_wrap_handler()(**kwargs)


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
