"""The one way mtlrec draws a progress bar: rich's Progress on rich's shared console (the one the
log handler writes to, so a bar and a log line never share a line), erased when done, and drawn
only on a terminal unless the caller decides otherwise. Training, prepare, evaluate, predict and
export build their bars here; only the columns differ."""

from __future__ import annotations

from typing import Any


def terminal_progress(*columns: Any, enabled: bool | None = None, console: Any = None) -> Any:
    """A transient `rich.progress.Progress` with these columns; `enabled=None`: on a terminal."""
    import rich

    console = console or rich.get_console()
    show = console.is_terminal if enabled is None else enabled
    return _Narrower(*columns, console=console, transient=True, disable=not show)


def _narrower_class():
    from rich.constrain import Constrain
    from rich.progress import Progress

    class Narrower(Progress):
        """Bars 2 columns narrower than the terminal. A bar as wide as the terminal leaves the
        cursor past its last column: the `^C` the terminal echoes on Ctrl-C then starts a new
        line, rich erases that line instead of the bar's, and the bar stayed on the screen,
        frozen at its last update before the stop. With room for the echo it is erased."""

        def __init__(self, *columns: Any, console: Any, **kwargs: Any) -> None:
            self.screen = console  # set first: Live asks for the renderable while it is built
            super().__init__(*columns, console=console, **kwargs)

        def get_renderable(self):
            return Constrain(super().get_renderable(), max(10, self.screen.width - 2))

    return Narrower


def _Narrower(*columns: Any, **kwargs: Any) -> Any:  # noqa: N802  (a class, built lazily)
    return _narrower_class()(*columns, **kwargs)
