"""Pass 2 over every row: sparse value -> id, dense fill + transform, label checks, one writer per split."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mtlrec.data import funnel
from mtlrec.data.prepare.fitting import Fitted, dense_values, sparse_values
from mtlrec.data.prepare.hashing import hashed_ids
from mtlrec.data.prepare.labels import label_values, weight_values
from mtlrec.data.prepare.multi import split_cells
from mtlrec.data.prepare.plan import OOV_ID, SPLITS, Plan
from mtlrec.data.prepare.reading import Block, plan_blocks
from mtlrec.data.prepare.splitting import split_codes
from mtlrec.data.spec import WEIGHT_SUFFIX
from mtlrec.errors import MtlrecError
from mtlrec.outputs import inject_fault

log = logging.getLogger(__name__)


def apply_transform(x: np.ndarray, p: Mapping[str, Any]) -> np.ndarray:
    t = p["transform"]
    if t == "standardize":
        return (x - p["mean"]) / p["std"]
    if t == "log1p_standardize":
        return (np.log1p(x) - p["mean"]) / p["std"]
    if t == "minmax":
        span = p["max"] - p["min"]
        return (x - p["min"]) / span if span > 0 else np.zeros_like(x)
    return x


def dense_column(plan: Plan, fitted: Fitted, block: Block, col: str) -> np.ndarray:
    """A dense column as float32 after its transform; a value the transform makes non-finite is
    one line (never a poisoned column)."""
    x = dense_values(plan, block, col)
    with np.errstate(over="ignore", invalid="ignore"):
        out = apply_transform(x, fitted.dense[col]).astype(np.float32)
    if not np.isfinite(out).all():
        i = int(np.flatnonzero(~np.isfinite(out))[0])
        source = plan.sources[block.source_index]
        t = fitted.dense[col]["transform"]
        raise MtlrecError(
            f"{source.path}: {block.where(source, i)}: dense column '{col}' holds {x[i]:g}, which "
            f"the {t} transform turns into {out[i]}; fix the value or choose another transform"
        )
    return out


@dataclass
class SplitSummary:
    rows: int = 0
    positives: dict[str, float] = field(default_factory=dict)  # task -> sum of labels in its space
    space: dict[str, int] = field(default_factory=dict)  # task -> rows in its sample space
    oov: dict[str, int] = field(default_factory=dict)  # field -> rows (values) mapped to oov
    dropped: int = 0  # rows dropped for breaking the funnel (funnel_violations=drop)
    truncated: dict[str, int] = field(default_factory=dict)  # bag/sequence -> rows cut to max_len
    values: dict[str, int] = field(default_factory=dict)  # bag/sequence -> values kept
    weights: dict[str, float] = field(default_factory=dict)  # sample weight column -> its sum


# Per-row truncation flags ride along as hidden columns (so funnel drops filter them too).
_TRUNC = "__truncated__"


def field_ids(plan: Plan, fitted: Fitted, name: str, values: pa.Array) -> pa.Array:
    """int32 ids of a field's values: hashed, or from the (shared) vocabulary, unseen -> OOV."""
    buckets = plan.buckets(name)
    if buckets:
        return pa.array(hashed_ids(values, buckets))
    m = next((m for m in plan.multi if m.name == name), None)
    owner = m.shares_vocab_with if m is not None and m.shares_vocab_with else name
    idx = pc.index_in(values, value_set=fitted.vocab[owner])
    return pc.fill_null(pc.add(idx, 1), OOV_ID).cast(pa.int32())


def encode_block(
    plan: Plan, fitted: Fitted, block: Block, labels: bool = True, flags: bool = True
) -> pa.Table:
    """The encoded columns of a raw block (labels=False: features only, for scoring raw rows)."""
    source = plan.sources[block.source_index]
    table = block.table
    cols: dict[str, pa.Array] = {}
    for c in plan.sparse:
        cols[c] = field_ids(plan, fitted, c, sparse_values(table, c))
    for m in plan.multi:
        if m.built:  # from the whole log (timeline.py): ids newest first, and the cut flags
            assert plan.timeline is not None
            to_ids = lambda v, name=m.name: field_ids(plan, fitted, name, v)  # noqa: E731
            start = block.source_index, block.first_row, table.num_rows
            cols[m.name], cut = plan.timeline.history(m.name, *start, to_ids)
            if flags:
                cols[_TRUNC + m.name] = pa.array(cut)
            continue
        where = lambda i: f"{source.path}: {block.where(source, i)}"  # noqa: E731
        cells = split_cells(table.column(m.name), m, where)
        cols[m.name] = cells.list_array(field_ids(plan, fitted, m.name, cells.values))
        if m.weighted:
            assert cells.weights is not None
            cols[m.name + WEIGHT_SUFFIX] = cells.list_array(cells.weights.astype(np.float32))
        if flags:
            cols[_TRUNC + m.name] = pa.array(cells.cut)
    for c in plan.dense:
        cols[c] = pa.array(dense_column(plan, fitted, block, c))
    for c in plan.labels if labels else ():
        if c in plan.weight_columns:
            cols[c] = pa.array(weight_values(block, source, c))
            continue
        y = label_values(plan, block, source, c)
        if np.isnan(y).any():
            i = int(np.flatnonzero(np.isnan(y))[0])
            raise MtlrecError(
                f"{source.path}: {block.where(source, i)}: label column '{c}' is empty"
            )
        if c in plan.binary_columns:
            bad = (y != 0) & (y != 1)
            if bad.any():
                i = int(np.flatnonzero(bad)[0])
                task = next((t.name for t in plan.targets if c in (t.label, t.where)), "funnel")
                raise MtlrecError(
                    f"{source.path}: {block.where(source, i)}: label column '{c}' of binary task '{task}' holds {y[i]:g}; binary labels must be 0 or 1"
                )
        cols[c] = pa.array(y.astype(np.float32))
    return pa.table(cols)


@dataclass
class _Writers:
    """One parquet writer per split, opened on the split's first rows."""

    out_dir: Path
    open: dict[str, pq.ParquetWriter] = field(default_factory=dict)

    def write(self, split: str, part: pa.Table) -> None:
        if split not in self.open:
            inject_fault(self.out_dir / f"{split}.parquet")  # tests: a full disk here
            self.open[split] = pq.ParquetWriter(self.out_dir / f"{split}.parquet", part.schema)
        self.open[split].write_table(part)

    def close(self) -> None:
        for w in self.open.values():
            w.close()


def encode(
    plan: Plan, fitted: Fitted, cuts: tuple[float, float] | None, out_dir: Path
) -> dict[str, SplitSummary]:
    summary = {s: SplitSummary() for s in SPLITS}
    violations: dict[tuple[str, str], int] = {}
    writers = _Writers(out_dir)
    try:
        for i in range(len(plan.sources)):
            for block in plan_blocks(plan, i):
                codes = split_codes(plan, block, cuts)
                encoded = encode_block(plan, fitted, block)
                encoded, codes = _funnel_rows(plan, encoded, codes, violations, summary)
                for k, split in enumerate(SPLITS):
                    mask = codes == k
                    if not mask.any():
                        continue
                    part = _summarize(plan, summary[split], encoded.filter(pa.array(mask)))
                    writers.write(split, part)
    finally:
        writers.close()
    if plan.funnel_violations == "error":
        rows = sum(s.rows for s in summary.values())
        funnel.raise_violations(f"dataset '{plan.name}'", violations, rows)
    elif any(violations.values()):
        log.warning(
            "dataset '%s': dropped %s (funnel_violations=drop)",
            plan.name,
            funnel.describe(violations),
        )
    for split, s in summary.items():
        if s.rows == 0:
            raise MtlrecError(
                f"dataset '{plan.name}': the {split} split received no rows; check dataset.files / dataset.split"
            )
    for col in plan.weight_columns:
        if not summary["train"].weights.get(col, 0.0) > 0:
            raise MtlrecError(
                f"dataset '{plan.name}': sample weight column '{col}' is 0 on every train row, so nothing would train; give the rows that count a weight > 0"
            )
    return summary


def _funnel_rows(plan, encoded, codes, violations, summary):
    """Count the rows breaking the funnel; with funnel_violations=drop, drop them."""
    if not plan.funnel_pairs:
        return encoded, codes
    bad, counts = funnel.violation_mask(
        lambda c: encoded.column(c).to_numpy(), plan.funnel_pairs, encoded.num_rows
    )
    funnel.add_counts(violations, counts)
    if plan.funnel_violations != "drop" or not bad.any():
        return encoded, codes
    for k, split in enumerate(SPLITS):
        summary[split].dropped += int((bad & (codes == k)).sum())
    return encoded.filter(pa.array(~bad)), codes[~bad]


def _summarize(plan: Plan, s: SplitSummary, part: pa.Table) -> pa.Table:
    """Adds the part to the split's summary; returns it without the hidden flag columns."""
    s.rows += part.num_rows
    for c in plan.sparse:
        s.oov[c] = s.oov.get(c, 0) + int(pc.sum(pc.equal(part.column(c), OOV_ID)).as_py() or 0)
    for m in plan.multi:
        flat = pc.list_flatten(part.column(m.name))
        s.oov[m.name] = s.oov.get(m.name, 0) + int(pc.sum(pc.equal(flat, OOV_ID)).as_py() or 0)
        s.values[m.name] = s.values.get(m.name, 0) + len(flat)
        cut = int(pc.sum(part.column(_TRUNC + m.name)).as_py() or 0)
        s.truncated[m.name] = s.truncated.get(m.name, 0) + cut
        part = part.drop_columns([_TRUNC + m.name])
    for c in plan.weight_columns:
        if c in part.column_names:  # scoring raw rows (encode_raw) may come without labels
            s.weights[c] = s.weights.get(c, 0.0) + float(pc.sum(part.column(c)).as_py() or 0.0)
    for t in plan.targets:
        y = part.column(t.label).to_numpy()
        if t.where:
            y = y[part.column(t.where).to_numpy() == 1]
        s.positives[t.name] = s.positives.get(t.name, 0.0) + float(y.sum())
        s.space[t.name] = s.space.get(t.name, 0) + len(y)
    return part
