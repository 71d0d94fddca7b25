"""Multi-valued cells: `a|b|c` strings or parquet list columns -> flat values + lengths, truncated.

All of it runs on whole columns (arrow kernels and numpy index arithmetic), never per row.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mtlrec.data.prepare.plan import MultiField
from mtlrec.errors import MtlrecError


@dataclass
class Cells:
    """The values of n cells, flattened: cell i holds values[starts[i] : starts[i] + lengths[i]]."""

    values: pa.Array  # strings
    lengths: np.ndarray  # int64 [n]
    weights: np.ndarray | None = None  # float64, parallel to values
    truncated_rows: int = 0
    truncated_values: int = 0
    cut: np.ndarray | None = None  # bool [n]: the cell held more than max_len values

    @property
    def offsets(self) -> np.ndarray:
        return np.concatenate([[0], np.cumsum(self.lengths)]).astype(np.int32)

    def list_array(self, flat: pa.Array | np.ndarray) -> pa.ListArray:
        return pa.ListArray.from_arrays(pa.array(self.offsets), pa.array(flat))


def _as_strings(arr: pa.Array) -> pa.Array:
    if not pa.types.is_string(arr.type):
        arr = pc.cast(arr, pa.string())
    return pc.utf8_trim_whitespace(arr)


def split_cells(
    column: pa.Array | pa.ChunkedArray,
    field: MultiField,
    where: Callable[[int], str],
) -> Cells:
    """The values of each cell (empty values and empty/missing cells hold none)."""
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    n = len(arr)
    if pa.types.is_list(arr.type) or pa.types.is_large_list(arr.type):
        lists = arr
    else:
        lists = pc.split_pattern(pc.fill_null(_as_strings(arr), ""), field.sep)
    lists = pc.fill_null(lists, pa.scalar([], lists.type))
    lengths = pc.list_value_length(lists).to_numpy(zero_copy_only=False).astype(np.int64)
    values = pc.fill_null(_as_strings(pc.list_flatten(lists)), "")
    rows = np.repeat(np.arange(n, dtype=np.int64), lengths)
    weights = None
    if field.weighted:
        # A value without a weight weighs 1: append one, then every value splits in two.
        has_sep = pc.match_substring(values, field.weight_sep)
        whole = pc.if_else(
            has_sep, values, pc.binary_join_element_wise(values, "1", field.weight_sep)
        )
        parts = pc.split_pattern(whole, field.weight_sep, max_splits=1, reverse=True)
        values = pc.utf8_trim_whitespace(pc.list_element(parts, 0))
        raw_w = pc.list_element(parts, 1)
        weights = _parse_weights(raw_w, rows, field, where)
    keep = pc.not_equal(values, "").to_numpy(zero_copy_only=False)
    if not keep.all():
        values = values.filter(pa.array(keep))
        rows = rows[keep]
        weights = weights[keep] if weights is not None else None
        lengths = np.bincount(rows, minlength=n).astype(np.int64)
    return truncate(Cells(values, lengths, weights), field)


def _parse_weights(raw: pa.Array, rows: np.ndarray, field: MultiField, where) -> np.ndarray:
    try:
        w = pc.cast(pc.utf8_trim_whitespace(raw), pa.float64()).to_numpy(zero_copy_only=False)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        texts = raw.to_pylist()
        for i, t in enumerate(texts):
            try:
                float(t)
            except ValueError:
                raise MtlrecError(
                    f"{where(int(rows[i]))}: weighted column '{field.name}' holds weight {t!r}; write values as id{field.weight_sep}weight with a number after '{field.weight_sep}'"
                ) from None
        raise
    bad = ~np.isfinite(w)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise MtlrecError(
            f"{where(int(rows[i]))}: weighted column '{field.name}' holds weight {w[i]:g}; weights must be finite"
        )
    return w


def truncate(cells: Cells, field: MultiField) -> Cells:
    """At most max_len values per cell: a bag's first ones, a sequence's newest ones, newest first."""
    lengths, n = cells.lengths, len(cells.lengths)
    rows = np.repeat(np.arange(n, dtype=np.int64), lengths)
    starts = np.cumsum(lengths) - lengths
    pos = np.arange(len(rows), dtype=np.int64) - np.repeat(starts, lengths)
    if field.kind == "sequence":
        pos = np.repeat(lengths, lengths) - 1 - pos  # 0 = the newest value (the cell's last)
    keep = pos < field.max_len
    new_lengths = np.minimum(lengths, field.max_len)
    new_starts = np.cumsum(new_lengths) - new_lengths
    order = np.empty(int(new_lengths.sum()), dtype=np.int64)
    order[new_starts[rows[keep]] + pos[keep]] = np.flatnonzero(keep)
    values = cells.values.take(pa.array(order))
    weights = cells.weights[order] if cells.weights is not None else None
    return Cells(
        values,
        new_lengths,
        weights,
        truncated_rows=int((lengths > field.max_len).sum()),
        cut=lengths > field.max_len,
        truncated_values=int((lengths - new_lengths).sum()),
    )
