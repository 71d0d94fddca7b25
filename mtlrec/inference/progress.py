"""Progress bars of evaluate, predict and export, on rich's shared console (`rich.get_console()`,
the one the training bars and log lines use), drawn only when that console is a terminal and
erased when done (transient): in a pipe or a file nothing is printed, so outputs stay clean.

* `RowsBar`: rows done of a total (None: not known ahead, a raw CSV), rows/s, ETA (predict);
* `StepsBar`: step k of n with the step's name and the elapsed time (evaluate: checkpoint, data,
  metrics; export: checkpoint, convert, check): the steps that take seconds on big data.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager


def _progress(*columns):
    from mtlrec.progress import terminal_progress

    return terminal_progress(*columns)


class RowsBar:
    """Rows of a known total, rows/s and ETA."""

    def __init__(self, label: str, total: int | None) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn

        self.progress = _progress(
            TextColumn(label),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[speed]} rows/s"),
            TimeRemainingColumn(),
        )
        self.task = self.progress.add_task(label, total=total, speed="-")
        self.started = time.perf_counter()
        self.progress.start()

    def advance(self, rows: int) -> None:
        done = self.progress.tasks[0].completed + rows
        speed = done / max(time.perf_counter() - self.started, 1e-9)
        self.progress.update(self.task, completed=done, speed=f"{speed:,.0f}")

    def close(self) -> None:
        self.progress.stop()


class StepsBar:
    """`LABEL ━━━━━━━━ 2/3 reading test.parquet (600 rows) 0:00:04`."""

    def __init__(self, label: str, steps: int) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn

        self.progress = _progress(
            TextColumn(label),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.description}"),
            TimeElapsedColumn(),
        )
        self.task = self.progress.add_task("", total=steps)
        self.progress.start()

    @contextmanager
    def step(self, what: str) -> Iterator[None]:
        self.progress.update(self.task, description=what)
        yield
        self.progress.advance(self.task)

    def close(self) -> None:
        self.progress.stop()


@contextmanager
def steps(label: str, count: int) -> Iterator[StepsBar]:
    bar = StepsBar(label, count)
    try:
        yield bar
    finally:
        bar.close()
