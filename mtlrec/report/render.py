"""A compare Table as text: csv, json, markdown (files, scripts) or a terminal table.

The csv/json cells hold the full-precision numbers (repr of the float); the table and markdown
cells round them to 4 decimals (`mean ± std` for seed groups). The terminal table comes in two
layouts (report/terminal.py): `wide` (one row per run) and `long` (one block of `column value`
lines per run, for narrow terminals); `auto` picks long when wide does not fit.
"""

from __future__ import annotations

import csv
import io
import json
import math
from typing import Any

from mtlrec.report.table import Table, format_cell  # format_cell: importable here too

FORMATS = ("table", "csv", "markdown", "json")
LAYOUTS = ("auto", "wide", "long")


def to_json(table: Table) -> str:
    out = []
    for row in table.rows:
        item = {}
        for c in table.columns:
            v = row.get(c)
            if isinstance(v, tuple):
                v = {"mean": v[0], "std": v[1]}
            if isinstance(v, float) and math.isnan(v):
                v = None
            item[c] = v
        out.append(item)
    return json.dumps(out, indent=2) + "\n"


def csv_columns(table: Table) -> list[str]:
    """Seed-group metric columns (and the Δ columns of --baseline) become two: `<metric>_mean`,
    `<metric>_std`."""
    columns = []
    for c in table.columns:
        grouped_metric = table.grouped and (c in table.metric_columns or c.startswith("Δ"))
        columns += [f"{c}_mean", f"{c}_std"] if grouped_metric else [c]
    return columns


def _csv_cells(table: Table, row: dict[str, Any]) -> list[str]:
    cells = []
    for c in table.columns:
        v = row.get(c)
        if table.grouped and (c in table.metric_columns or c.startswith("Δ")):
            cells += ["", ""] if not isinstance(v, tuple) else [repr(v[0]), repr(v[1])]
        elif isinstance(v, float):
            cells.append("" if math.isnan(v) else repr(v))
        elif isinstance(v, (list, dict)):
            cells.append(json.dumps(v))
        else:
            cells.append("" if v is None else str(v))
    return cells


def to_csv(table: Table) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(csv_columns(table))
    for row in table.rows:
        writer.writerow(_csv_cells(table, row))
    return buf.getvalue()


def to_markdown(table: Table) -> str:
    lines = ["| " + " | ".join(table.columns) + " |"]
    align = ["---:" if c in table.metric_columns else "---" for c in table.columns]
    lines.append("| " + " | ".join(align) + " |")
    for row in table.rows:
        cells = [format_cell(row.get(c), c).replace("|", "\\|") for c in table.columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def render(
    table: Table,
    fmt: str,
    width: int | None = None,
    layout: str = "auto",
    color: bool = False,
) -> str:
    """The table as text in `fmt`; for `table`: `width` None = no limit (wide at full width)."""
    if fmt == "json":
        return to_json(table)
    if fmt == "csv":
        return to_csv(table)
    if fmt == "markdown":
        return to_markdown(table)
    from mtlrec.report.terminal import render_terminal

    return render_terminal(table, width=width, layout=layout, color=color)
