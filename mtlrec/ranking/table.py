"""The table `mtlrec fuse` prints: one row per run at its best fusion, next to the baselines."""

from __future__ import annotations

import math
import os
import statistics
from typing import Any


def _num(value: Any) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.4f}"


def fusion_table(records: list[dict[str, Any]]) -> str:
    """Columns: run, model, form, weights, val and test of the fusion, of the best single task
    (chosen on val) and of the equal-weight sum; then the target it was all scored by."""
    header = ["run", "model", "form", "weights", "val", "test", "best single", "val", "test",
              "equal_sum test"]  # fmt: skip
    rows = []
    common = os.path.commonpath([r["run_dir"] for r in records]) if len(records) > 1 else ""
    for r in records:
        singles = {t: r["baselines"][t] for t in r["tasks"]}
        best = max(singles, key=lambda t: _sortable(singles[t]["val"]))  # chosen on val
        weights = " ".join(f"{t}={w:.3f}" for t, w in r["weights"].items())
        rows.append(
            [
                os.path.relpath(r["run_dir"], common) if common else r["run_dir"],
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
    where = f" (runs under {common})" if common else ""
    return "\n".join(lines) + f"\ntarget: {note}{where}\n" + by_model(records)


def by_model(records: list[dict[str, Any]]) -> str:
    """Models at their best fusion: per model, mean ± sample std over its runs of the fused test
    value and of the best single task's (chosen on val), and their difference."""
    models: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        models.setdefault(str(r["model"]), []).append(r)
    if len(records) < 2:
        return ""
    lines = ["", "model  runs  fused test  best single test  fused - single"]
    for model, members in models.items():
        fused = [r["test"] for r in members]
        single = [_best_single(r)["test"] for r in members]
        gain = [f - s for f, s in zip(fused, single, strict=True)]
        lines.append(f"{model}  {len(members)}  {_ms(fused)}  {_ms(single)}  {_ms(gain)}")
    widths = [
        max(len(c) for c in col) for col in zip(*(ln.split("  ") for ln in lines[1:]), strict=True)
    ]
    out = [lines[0]] + [
        "  ".join(c.ljust(w) for c, w in zip(ln.split("  "), widths, strict=True)).rstrip()
        for ln in lines[1:]
    ]
    return "\n".join(out) + "\n"


def _best_single(record: dict[str, Any]) -> dict[str, Any]:
    singles = {t: record["baselines"][t] for t in record["tasks"]}
    return singles[max(singles, key=lambda t: _sortable(singles[t]["val"]))]


def _ms(values: list[float]) -> str:
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return "-"
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.4f} ± {std:.4f}"


def _sortable(value: Any) -> float:
    return value if value is not None and math.isfinite(value) else -math.inf
