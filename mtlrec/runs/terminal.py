"""The compare table on a terminal: `wide` (one row per run) or `long` (one block per run).

Nothing is ever cut: a wide table is laid out at its full width (rich never shrinks a column,
so `0.4932 ± 0.0804` cannot turn into `0.4932 ± 0.0`); when that is wider than the terminal,
`auto` switches to the long layout, which fits any width:

    0  completed
      num_experts    2
      test/mean_auc  0.7000
      ...

Colours (red failed, yellow unfinished rows, bold headers) only when `color` is set, which
`mtlrec compare` does for a terminal only (never in a pipe or a file).
"""

from __future__ import annotations

import io
from typing import Any

from mtlrec.runs.render import format_cell
from mtlrec.runs.table import NUMERIC_COLUMNS, Table

ERROR_WIDTH = 60  # error messages fold at this width in the wide layout (they are not numbers)
UNLIMITED = 100_000


def status_style(status: str) -> str | None:
    if status.startswith("failed") or ", " in status and "failed" in status:
        return "red"
    if "completed" in status and "," not in status:
        return None
    return "yellow"


def _console(width: int, color: bool):
    from rich.console import Console

    return Console(
        file=io.StringIO(),
        width=width,
        force_terminal=color,
        color_system="standard" if color else None,
        highlight=False,
        emoji=False,
        legacy_windows=False,
    )


def _output(console) -> str:
    text = console.file.getvalue()
    return "\n".join(line.rstrip() for line in text.split("\n"))


def wide(table: Table, color: bool) -> str:
    """One row per run, every column at the width of its longest cell."""
    from rich.table import Table as RichTable
    from rich.text import Text

    rich_table = RichTable(title=f"{len(table.rows)} {'group' if table.grouped else 'run'}(s)")
    for c in table.columns:
        numeric = c in table.metric_columns or c in NUMERIC_COLUMNS
        is_error = c == "error"
        rich_table.add_column(
            c,
            justify="right" if numeric else "left",
            overflow="fold",
            no_wrap=not is_error,
            max_width=ERROR_WIDTH if is_error else None,
            style="cyan" if c in table.metric_columns else None,
        )
    for row in table.rows:
        style = status_style(str(row.get("status", "")))
        cells = [Text(format_cell(row.get(c), c)) for c in table.columns]
        rich_table.add_row(*cells, style=style)
    console = _console(UNLIMITED, color)
    console.print(rich_table)
    return _output(console)


def _title(row: dict[str, Any], index: int, table: Table) -> str:
    if "run" in row:
        return str(row["run"])
    return f"group {index + 1}"


def long(table: Table, width: int, color: bool) -> str:
    """One block per run: a title line (run label and status), then `column  value` lines."""
    from rich.text import Text

    shown = [c for c in table.columns if c not in ("run", "status")]
    key_width = max((len(c) for c in shown), default=0)
    console = _console(max(width, key_width + 20), color)
    kind = "group" if table.grouped else "run"
    console.print(Text(f"{len(table.rows)} {kind}(s)", style="bold"))
    for index, row in enumerate(table.rows):
        status = str(row.get("status", ""))
        console.print()
        title = Text(_title(row, index, table), style="bold")
        title.append(f"  {status}", style=status_style(status) or "green")
        console.print(title)
        for c in shown:
            cell = format_cell(row.get(c), c)
            if cell == "":
                continue
            line = Text(f"  {c:<{key_width}}  ")
            line.append(cell, style="cyan" if c in table.metric_columns else None)
            console.print(line, overflow="fold")
    return _output(console)


def natural_width(rendered: str) -> int:
    from rich.text import Text

    return max((Text.from_ansi(line).cell_len for line in rendered.split("\n")), default=0)


def render_terminal(table: Table, width: int | None, layout: str, color: bool) -> str:
    """`layout` auto: wide when it fits in `width` (None: no limit), else long."""
    if layout == "long":
        return long(table, width or 100, color)
    text = wide(table, color)
    if layout == "auto" and width is not None and natural_width(text) > width:
        return long(table, width, color)
    return text
