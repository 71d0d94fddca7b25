"""Pass 1 over the train rows: value counts per sparse field and stable statistics per dense column."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mtlrec.data.funnel import violation_mask
from mtlrec.data.prepare.hashing import Occupancy, hashed_ids
from mtlrec.data.prepare.labels import label_values
from mtlrec.data.prepare.multi import split_cells
from mtlrec.data.prepare.plan import Plan
from mtlrec.data.prepare.reading import Block, numeric, plan_blocks
from mtlrec.data.prepare.splitting import split_codes
from mtlrec.errors import MtlrecError


class ValueCounter:
    """Value counts of one sparse field over many blocks, merged in arrow.

    Per-block counts are merged into one table as soon as they hold as many entries as the
    merged table (and at least 100k): memory stays within a small multiple of the number of
    distinct values, and the merging work is amortized over the blocks.
    """

    def __init__(self) -> None:
        self.parts: list[pa.Table] = []
        self.pending = 0
        self.merged_rows = 0

    def add(self, values: pa.Array) -> None:
        if len(values) == 0:
            return
        vc = pc.value_counts(values)
        part = pa.table({"v": vc.field("values"), "c": vc.field("counts").cast(pa.int64())})
        self.parts.append(part)
        self.pending += part.num_rows
        if self.pending >= max(100_000, self.merged_rows):
            merged = self.merged()
            self.parts, self.pending, self.merged_rows = [merged], 0, merged.num_rows

    def merged(self) -> pa.Table:
        if not self.parts:
            return pa.table({"v": pa.array([], pa.string()), "c": pa.array([], pa.int64())})
        if len(self.parts) == 1:
            return self.parts[0]
        t = pa.concat_tables(self.parts).group_by("v").aggregate([("c", "sum")])
        return t.rename_columns(["v", "c"]).combine_chunks()


@dataclass
class Moments:
    """Count, mean and sum of squared deviations (M2), merged block by block (Chan et al. 1979).

    Merging per-block (n, mean, M2) never subtracts two large sums, so a column like
    1.7e9 + U(0, 10) keeps its std to ~1e-12 relative (sum / sum-of-squares loses it entirely).
    """

    n: int = 0
    mean: float = 0.0
    m2: float = 0.0

    def add(self, x: np.ndarray) -> None:
        nb = len(x)
        if nb == 0:
            return
        mean_b = float(x.mean())
        m2_b = float(np.square(x - mean_b).sum())
        n = self.n + nb
        delta = mean_b - self.mean
        self.mean += delta * nb / n
        self.m2 += m2_b + delta * delta * self.n * nb / n
        self.n = n

    def mean_std(self) -> tuple[float, float]:
        std = math.sqrt(max(self.m2 / self.n, 0.0))
        return self.mean, (std if std > 1e-12 else 1.0)


@dataclass
class DenseStats:
    """What a dense column's transform needs from the train rows: moments (of x or log1p x), range."""

    plain: Moments = field(default_factory=Moments)
    log: Moments = field(default_factory=Moments)
    lo: float = math.inf
    hi: float = -math.inf

    @property
    def n(self) -> int:
        return self.plain.n

    def add(self, x: np.ndarray, with_log: bool) -> None:
        if len(x) == 0:
            return
        self.plain.add(x)
        self.lo, self.hi = min(self.lo, float(x.min())), max(self.hi, float(x.max()))
        if with_log:
            self.log.add(np.log1p(x))

    def params(self, transform: str) -> dict[str, float]:
        if transform == "none" or self.n == 0:
            return {}
        if transform in ("standardize", "log1p_standardize"):
            mean, std = (self.plain if transform == "standardize" else self.log).mean_std()
            return {"mean": mean, "std": std}
        return {"min": self.lo, "max": self.hi}


def sparse_values(table: pa.Table, col: str) -> pa.Array:
    """A sparse column as strings (vocabulary keys); missing values become ''."""
    arr = table.column(col).combine_chunks()
    if not (pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type)):
        arr = pc.cast(arr, pa.string())
    return pc.fill_null(arr, "")


# The largest magnitude a dense value may have: the prepared column is float32, and within it
# the transforms' float64 sums of squares cannot overflow.
DENSE_LIMIT = float(np.finfo(np.float32).max)


def dense_values(plan: Plan, block: Block, col: str) -> np.ndarray:
    """A dense column of the block as float64: missing (null/empty) -> the fill value; a value
    that is inf, NaN or beyond float32 handled by dataset.dense_nonfinite (default: one line)."""
    source = plan.sources[block.source_index]
    x = numeric(block, source, col, "dense")
    missing = block.table.column(col).is_null().to_numpy(zero_copy_only=False)
    bad = ~missing & ~(np.abs(x) <= DENSE_LIMIT)  # NaN compares False: bad too
    if bad.any():
        x = _nonfinite(
            plan, x, bad, f"{source.path}: {block.where(source, int(np.argmax(bad)))}", col
        )
    x = np.where(missing, plan.fills[col], x)
    if plan.transforms[col] == "log1p_standardize" and (x <= -1).any():
        i = int(np.flatnonzero(x <= -1)[0])
        raise MtlrecError(
            f"{source.path}: {block.where(source, i)}: dense column '{col}' holds {x[i]:g}; log1p_standardize needs values > -1 (use standardize)"
        )
    return x


def _nonfinite(plan: Plan, x: np.ndarray, bad: np.ndarray, where: str, col: str) -> np.ndarray:
    policy = plan.dense_nonfinite
    if policy == "impute":
        return np.where(bad, plan.fills[col], x)
    if policy == "clip":  # +-inf and overflow to the limit; NaN has no side: the fill value
        clipped = np.clip(np.nan_to_num(x, nan=plan.fills[col]), -DENSE_LIMIT, DENSE_LIMIT)
        return np.where(bad, clipped, x)
    value = x[int(np.argmax(bad))]
    raise MtlrecError(
        f"{where}: dense column '{col}' holds {value:g}: not a finite float32 value "
        "(beyond ±3.4e38); fix it, or set dataset.dense_nonfinite=clip or impute (the fill value)"
    )


@dataclass
class Fitted:
    vocab: dict[str, pa.Array]  # field -> values with ids 1..V (index + 1)
    counts: dict[str, pa.Array]
    dense: dict[str, dict[str, Any]]  # column -> transform name, fill value and parameters
    train_rows: int
    # Hashed field -> its train bucket occupancy (for the collision estimate).
    hashing: dict[str, Occupancy] = field(default_factory=dict)


def _train_sources(plan: Plan) -> list[int]:
    out = []
    for i, source in enumerate(plan.sources):
        if source.split is not None and source.split != "train":
            continue
        if source.fractions is not None and "train" not in source.fractions:
            continue
        out.append(i)
    return out


def train_mask(plan: Plan, block: Block, cuts: tuple[float, float] | None) -> np.ndarray:
    """Rows of the block that go to train (and, with funnel_violations=drop, are kept)."""
    keep = split_codes(plan, block, cuts) == 0
    if plan.funnel_violations == "drop" and plan.funnel_pairs and keep.any():
        source = plan.sources[block.source_index]
        bad, _ = violation_mask(
            lambda c: label_values(plan, block, source, c), plan.funnel_pairs, len(keep)
        )
        keep &= ~bad
    return keep


def _vocab_fields(plan: Plan) -> tuple[list[str], list[str]]:
    """(fields whose values are counted into a vocabulary, fields that are hashed)."""
    owners = plan.sparse + [m.name for m in plan.multi if not m.shares_vocab_with]
    hashed = [c for c in owners if plan.buckets(c)]
    return [c for c in owners if c not in hashed], hashed


def block_values(
    plan: Plan, block: Block, rows: pa.Table, index: np.ndarray, name: str
) -> pa.Array:
    """The values of field `name` in the table `rows` (row i is row index[i] of the block)."""
    m = next((m for m in plan.multi if m.name == name), None)
    if m is None:
        return sparse_values(rows, name)
    source = plan.sources[block.source_index]
    where = lambda i: f"{source.path}: {block.where(source, int(index[i]))}"  # noqa: E731
    return split_cells(rows.column(name), m, where).values


def fit(plan: Plan, cuts: tuple[float, float] | None) -> Fitted:
    counted, hashed = _vocab_fields(plan)
    counters = {c: ValueCounter() for c in counted}
    occupancy = {c: Occupancy(int(plan.buckets(c) or 0)) for c in hashed}
    stats = {c: DenseStats() for c in plan.dense}
    train_rows = 0
    for i in _train_sources(plan):
        for block in plan_blocks(plan, i):
            is_train = train_mask(plan, block, cuts)
            if not is_train.any():
                continue
            rows = block.table.filter(pa.array(is_train))
            index = np.flatnonzero(is_train)
            train_rows += rows.num_rows
            for c in counted:
                counters[c].add(block_values(plan, block, rows, index, c))
            for c, occ in occupancy.items():
                occ.add(hashed_ids(block_values(plan, block, rows, index, c), occ.buckets))
            for c in plan.dense:
                x = dense_values(plan, block, c)[is_train]
                stats[c].add(x, with_log=plan.transforms[c] == "log1p_standardize")
    if train_rows == 0:
        raise MtlrecError(f"dataset '{plan.name}': the train split received no rows")
    vocab, counts = {}, {}
    for c, counter in counters.items():
        t = counter.merged()
        t = t.filter(pc.greater_equal(t.column("c"), plan.min_count))
        # Most frequent first, ties by value: ids do not depend on file or block order.
        t = t.sort_by([("c", "descending"), ("v", "ascending")])
        vocab[c], counts[c] = t.column("v").combine_chunks(), t.column("c").combine_chunks()
    dense = {
        c: {
            "transform": plan.transforms[c],
            "fill": plan.fills[c],
            **stats[c].params(plan.transforms[c]),
        }
        for c in plan.dense
    }
    return Fitted(vocab, counts, dense, train_rows, occupancy)
