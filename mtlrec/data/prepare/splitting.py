"""Which split each raw row goes to: by file, by a seeded per-row hash, by a time/order column, or
by each user's time order (computed from the whole log in timeline.py)."""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from mtlrec.data.prepare.plan import SPLITS, Plan
from mtlrec.data.prepare.reading import Block, iter_blocks, numeric
from mtlrec.errors import MtlrecError

_M64 = (1 << 64) - 1


def row_uniforms(seed: int, source_index: int, first_row: int, n: int) -> np.ndarray:
    """Uniform [0, 1) numbers from a seeded hash of (seed, file number, row number).

    splitmix64's finalizer over a counter: independent of block sizes, so the split of a row never
    depends on how the file was read.
    """
    offset = (seed * 0x9E3779B97F4A7C15 + (source_index + 1) * 0xD1B54A32D192ED03) & _M64
    x = np.arange(first_row, first_row + n, dtype=np.uint64) + np.uint64(offset)
    x ^= x >> np.uint64(30)
    x *= np.uint64(0xBF58476D1CE4E5B9)
    x ^= x >> np.uint64(27)
    x *= np.uint64(0x94D049BB133111EB)
    x ^= x >> np.uint64(31)
    return (x >> np.uint64(11)).astype(np.float64) * 2.0**-53


def _by_fractions(u: np.ndarray, fractions: Mapping[str, float]) -> np.ndarray:
    codes = np.full(len(u), SPLITS.index(list(fractions)[-1]), dtype=np.int8)
    edge = 0.0
    assigned = np.zeros(len(u), dtype=bool)
    for split, share in fractions.items():
        edge += share
        hit = ~assigned & (u < edge)
        codes[hit] = SPLITS.index(split)
        assigned |= hit
    return codes


def split_codes(plan: Plan, block: Block, cuts: tuple[float, float] | None) -> np.ndarray:
    source = plan.sources[block.source_index]
    n = block.table.num_rows
    if source.split is not None:
        return np.full(n, SPLITS.index(source.split), dtype=np.int8)
    if plan.split_by == "user_time":  # decided from the whole log (timeline.py)
        assert plan.timeline is not None
        return plan.timeline.split_codes(block.source_index, block.first_row, n)
    if plan.split_by == "column":
        assert (
            plan.split_column is not None and cuts is not None
        )  # checked by the csv source's plan
        t = numeric(block, source, plan.split_column, "split")
        if np.isnan(t).any():
            i = int(np.flatnonzero(np.isnan(t))[0])
            raise MtlrecError(
                f"{source.path}: {block.where(source, i)}: split column '{plan.split_column}' is empty"
            )
        return np.where(t < cuts[0], 0, np.where(t < cuts[1], 1, 2)).astype(np.int8)
    u = row_uniforms(plan.split_seed, block.source_index, block.first_row, n)
    return _by_fractions(u, source.fractions or {})


def column_cuts(plan: Plan) -> tuple[float, float]:
    """Cut values of the split column: train < cut0 <= val < cut1 <= test.

    Reads the one column (8 bytes per row) and takes the order statistics at the train and
    train+val shares, so the oldest rows train and the newest test.
    """
    if plan.split_boundaries is not None:
        return plan.split_boundaries
    column = plan.split_column
    assert column is not None  # checked by the csv source's plan
    parts = []
    for i, s in enumerate(plan.sources):
        for block in iter_blocks(plan, i, [column]):
            parts.append(numeric(block, s, column, "split"))
    t = np.sort(np.concatenate(parts))
    t = t[~np.isnan(t)]
    fr = plan.split_fractions or {}
    n_train = int(round(len(t) * fr.get("train", 0.0)))
    n_val = int(round(len(t) * fr.get("val", 0.0)))
    cut0 = t[min(n_train, len(t) - 1)]
    cut1 = t[min(n_train + n_val, len(t) - 1)] if fr.get("test") else math.inf
    return float(cut0), float(cut1)
