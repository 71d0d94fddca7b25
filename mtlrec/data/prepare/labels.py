"""Label columns as numbers: numeric labels as they are, string labels of binary tasks mapped by
`positive` (and `negative`) values, e.g. Census' `>50K` / `<=50K`; sample weight columns checked
(finite, >= 0, present on every row)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mtlrec.data.prepare.plan import Plan
from mtlrec.data.prepare.reading import Block, numeric
from mtlrec.errors import MtlrecError


def label_values(plan: Plan, block: Block, source, col: str) -> np.ndarray:
    """float64 labels of a block (NaN where missing); a string label outside its map is one line."""
    mapping = plan.label_maps.get(col)
    if mapping is None:
        return numeric(block, source, col, "label")
    arr = block.table.column(col)
    if not (pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type)):
        arr = pc.cast(arr, pa.string())
    text = pc.utf8_trim_whitespace(arr)
    missing = pc.is_null(text).to_numpy(zero_copy_only=False)
    pos = pc.fill_null(pc.is_in(text, pa.array(mapping.positive, pa.string())), False)
    y = pos.to_numpy(zero_copy_only=False).astype(np.float64)
    if mapping.negative is not None:
        neg = pc.fill_null(pc.is_in(text, pa.array(mapping.negative, pa.string())), False)
        bad = ~missing & ~y.astype(bool) & ~neg.to_numpy(zero_copy_only=False)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise MtlrecError(
                f"{source.path}: {block.where(source, i)}: label column '{col}' holds {text[i].as_py()!r}, neither a positive {list(mapping.positive)} nor a negative {list(mapping.negative)} value; add it to the target's positive or negative list"
            )
    y[missing] = np.nan
    return y


def weight_values(block: Block, source, col: str) -> np.ndarray:
    """float32 sample weights of a block; an empty, non-numeric, negative or non-finite weight is
    one line naming the file, line, column and value."""
    w = numeric(block, source, col, "sample weight")
    with np.errstate(over="ignore"):
        w32 = w.astype(np.float32)
    bad = ~np.isfinite(w32) | (w32 < 0)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        where = f"{source.path}: {block.where(source, i)}: sample weight column '{col}'"
        if np.isnan(w[i]):
            raise MtlrecError(
                f"{where} is empty; give every row a weight (0 leaves a row out of the loss)"
            )
        raise MtlrecError(
            f"{where} holds {w[i]:g}; sample weights must be finite numbers >= 0 (0 leaves a row out of the loss)"
        )
    return w32
