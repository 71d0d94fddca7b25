"""A progress bar per pass over a raw file while `mtlrec prepare` runs (on a terminal only).

Prepare reads its raw files more than once (fit the vocabularies and dense statistics on train,
then encode every split; a time split reads the order column first). Each pass over a file shows
rows read and rows/s. The bars
share rich's console with the log lines, so a bar and a log line never share a line; off a
terminal nothing is drawn.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

_active: dict[str, Any] = {}


@contextlib.contextmanager
def prepare_progress(enabled: bool | None = None) -> Iterator[None]:
    """Show a bar per pass over a raw file inside this block (default: on a terminal)."""
    from rich.progress import BarColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from mtlrec.progress import terminal_progress

    progress = terminal_progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.fields[rows]:>12,} rows"),
        TextColumn("{task.fields[speed]:>10} rows/s"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        enabled=enabled,
    )
    with progress:
        _active["progress"], _active["passes"] = progress, Counter()
        try:
            yield
        finally:
            _active.clear()


def tracked(blocks: Iterator[Any], path: Path) -> Iterator[Any]:
    """`blocks` (each with `.table`) passed through, counted on a bar for this pass over `path`
    (rows and rows/s; a raw file's row count is not known before it is read)."""
    progress = _active.get("progress")
    if progress is None or progress.disable:
        yield from blocks
        return
    import time

    passes = _active["passes"]
    passes[path] += 1
    total = None  # a raw file's row count is not known before it is read
    task = progress.add_task(f"{path.name} (pass {passes[path]})", total=total, rows=0, speed="-")
    start, rows = time.perf_counter(), 0
    try:
        for block in blocks:
            rows += block.table.num_rows
            speed = f"{rows / max(time.perf_counter() - start, 1e-9):,.0f}"
            progress.update(task, rows=rows, speed=speed, refresh=True)
            yield block
    finally:
        progress.remove_task(task)
