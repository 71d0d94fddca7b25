"""The table `mtlrec fuse` prints: one row per run at its best fusion, next to the baselines."""

from __future__ import annotations

import math
from typing import Any


def _num(value: Any) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.4f}"


def fusion_table(records: list[dict[str, Any]]) -> str:
    """Columns: run, model, form, weights, val and test of the fusion, of the best single task
    (chosen on val) and of the equal-weight sum; then the target it was all scored by."""
    header = ["run", "model", "form", "weights", "val", "test", "best single", "val", "test",
              "equal_sum test"]  # fmt: skip
    rows = []
    for r in records:
        singles = {t: r["baselines"][t] for t in r["tasks"]}
        best = max(singles, key=lambda t: _sortable(singles[t]["val"]))
        weights = " ".join(f"{t}={w:.3f}" for t, w in r["weights"].items())
        rows.append(
            [
                r["run_dir"],
                str(r["model"]),
                r["form"],
                weights,
                _num(r["val"]),
                _num(r["test"]),
                best,
                _num(singles[best]["val"]),
                _num(singles[best]["test"]),
                _num(r["baselines"]["equal_sum"]["test"]),
            ]
        )
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=True)]
    lines = ["  ".join(str(x).ljust(w) for x, w in zip(row, widths, strict=True)).rstrip()
             for row in [header, *rows]]  # fmt: skip
    target = records[0]["target"] if records else {}
    note = ", ".join(f"{k}={v}" for k, v in target.items())
    return "\n".join(lines) + f"\ntarget: {note}\n"


def _sortable(value: Any) -> float:
    return value if value is not None and math.isfinite(value) else -math.inf
