"""The one way mtlrec draws a progress bar: rich's Progress on rich's shared console (the one the
log handler writes to, so a bar and a log line never share a line), erased when done, and drawn
only on a terminal unless the caller decides otherwise. Training, prepare, evaluate, predict and
export build their bars here; only the columns differ."""

from __future__ import annotations

from typing import Any


def terminal_progress(*columns: Any, enabled: bool | None = None, console: Any = None) -> Any:
    """A transient `rich.progress.Progress` with these columns; `enabled=None`: on a terminal."""
    import rich
    from rich.progress import Progress

    console = console or rich.get_console()
    show = console.is_terminal if enabled is None else enabled
    return Progress(*columns, console=console, transient=True, disable=not show)
