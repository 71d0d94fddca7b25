"""The compare table on a terminal: `wide` (one row per run) or `long` (one column per run).

Nothing is ever cut: rich never gets to shrink a column (a shrunk column is how
`0.4932 ± 0.0804` turned into `0.4932 ± 0.0` on a 100-column terminal). With `auto`:

1. the wide table, when its full width fits the terminal;
2. else the wide table with its headers broken after `/` (`test/` over `cvr_auc`), when that fits;
3. else `long`: the table transposed (one row per column of the wide table, one column per
   run), in as many blocks of runs, one under the other, as the width needs.

`--layout wide` always gives the wide table at its full width (the terminal wraps the lines).
Colours (bold headers, cyan metrics, red failed and yellow unfinished runs) only when `color`
is set, which `mtlrec compare` does on a terminal only (never in a pipe or a file).
"""

from __future__ import annotations

import io
import re
from typing import Any

from mtlrec.report.table import NUMERIC_COLUMNS, Table, format_cell

ERROR_WIDTH = 60  # error messages fold at this width (they are not numbers)
UNLIMITED = 100_000
DEFAULT_WIDTH = 100  # --layout long without a known width (a pipe)
# Trailing blanks of a line, also when colour codes follow them.
TRAILING_BLANKS = re.compile(r" +((?:\x1b\[[0-9;]*m)*)$")


def status_style(status: str) -> str | None:
    if "failed" in status:
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


def _print(renderables: list, width: int, color: bool) -> str:
    console = _console(width, color)
    for item in renderables:
        console.print(item)
    text = console.file.getvalue()
    return "\n".join(TRAILING_BLANKS.sub(r"\1", line) for line in text.split("\n"))


def _title(table: Table) -> str:
    return f"{len(table.rows)} {'group' if table.grouped else 'run'}(s)"


def _header(column: str, split: bool) -> str:
    return column.replace("/", "/\n", 1) if split and "/" in column else column


def wide(table: Table, color: bool, split_headers: bool = False) -> str:
    """One row per run, every column at the width of its longest cell (or header line)."""
    from rich.table import Table as RichTable
    from rich.text import Text

    rich_table = RichTable(title=_title(table))
    for c in table.columns:
        numeric = c in table.metric_columns or c in NUMERIC_COLUMNS
        is_error = c == "error"
        rich_table.add_column(
            _header(c, split_headers),
            justify="right" if numeric else "left",
            overflow="fold",
            no_wrap=not is_error,
            max_width=ERROR_WIDTH if is_error else None,
            style="cyan" if c in table.metric_columns else None,
        )
    for row in table.rows:
        cells = [Text(format_cell(row.get(c), c)) for c in table.columns]
        rich_table.add_row(*cells, style=status_style(str(row.get("status", ""))))
    return _print([rich_table], UNLIMITED, color)


def _labels(table: Table) -> list[str]:
    if "run" in table.columns:
        return [str(row.get("run", "")) for row in table.rows]
    return [f"group {i + 1}" for i in range(len(table.rows))]


def _chunks(widths: list[int], key_width: int, width: int) -> list[list[int]]:
    """Runs per block so that a block fits `width`: a rich box is 1 + sum(column + 3) wide."""
    chunks: list[list[int]] = []
    used = 0
    for i, w in enumerate(widths):
        if chunks and used + w + 3 <= width:
            chunks[-1].append(i)
            used += w + 3
        else:
            chunks.append([i])
            used = 1 + key_width + 3 + w + 3
    return chunks


def long(table: Table, width: int, color: bool) -> str:
    """Transposed: one row per column of the wide table, one column per run, in blocks."""
    from rich.table import Table as RichTable
    from rich.text import Text

    fields = [c for c in table.columns if c != "run"]
    labels = _labels(table)
    cells = [[format_cell(row.get(c), c) for c in fields] for row in table.rows]
    key_width = max((len(c) for c in fields), default=0)
    room = max(8, width - key_width - 7)  # the widest a single run's column may be
    widths = [
        min(room, max([len(labels[i])] + [len(v) for v in cells[i]])) for i in range(len(labels))
    ]
    blocks: list[Any] = [Text(_title(table), style="bold")]
    for chunk in _chunks(widths, key_width, width):
        block = RichTable(show_header=True, title=None)
        block.add_column("", style="bold", no_wrap=True)
        for i in chunk:
            style = status_style(str(table.rows[i].get("status", "")))
            block.add_column(
                Text(labels[i], style=style or ""),
                justify="right",
                overflow="fold",
                max_width=room,
            )
        for f, field in enumerate(fields):
            metric = field in table.metric_columns
            block.add_row(
                Text(field),
                *[Text(cells[i][f], style="cyan" if metric else "") for i in chunk],
            )
        blocks.append(block)
    return _print(blocks, max(width, key_width + 20), color)


def natural_width(rendered: str) -> int:
    from rich.text import Text

    return max((Text.from_ansi(line).cell_len for line in rendered.split("\n")), default=0)


def render_terminal(table: Table, width: int | None, layout: str, color: bool) -> str:
    """`layout` auto: wide when it fits in `width` (None: no limit), else long."""
    if layout == "long":
        return long(table, width or DEFAULT_WIDTH, color)
    text = wide(table, color)
    if layout == "wide" or width is None or natural_width(text) <= width:
        return text
    text = wide(table, color, split_headers=True)
    if natural_width(text) <= width:
        return text
    return long(table, width, color)
