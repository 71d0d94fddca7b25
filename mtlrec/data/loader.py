"""Prepared parquet -> contiguous tensors, validated on load; batches are index slices.

Each split becomes three tensors: `sparse` int64 [N, C] (ids already offset into one fused
embedding table), `dense` float32 [N, E] and `labels` float32 [N, L]. Bag and sequence fields
(parquet list columns) ride in `max_len` extra columns each, padded with -1, and the weights of
weighted bags in `max_len` extra dense columns: `DatasetSpec.layout` says which column is what. A batch is `split.take(idx)`:
one gather per tensor, no per-sample `__getitem__` and no collate.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from mtlrec.data import funnel
from mtlrec.data.prepare.manifest import verified_read
from mtlrec.data.spec import PAD_ID, WEIGHT_SUFFIX, DatasetSpec, FeatureSpec, TaskSpec
from mtlrec.errors import MtlrecError

log = logging.getLogger(__name__)


@dataclass
class Batch:
    sparse: torch.Tensor  # int64 [B, F], fused ids
    dense: torch.Tensor  # float32 [B, D]
    labels: torch.Tensor  # float32 [B, L], columns as DatasetSpec.labels

    def __len__(self) -> int:
        return self.labels.shape[0]


@dataclass
class SplitTensors:
    """A whole split as contiguous tensors."""

    sparse: torch.Tensor
    dense: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return self.labels.shape[0]

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.sparse, self.dense, self.labels))

    def take(self, idx: torch.Tensor) -> Batch:
        return Batch(self.sparse[idx], self.dense[idx], self.labels[idx])

    def slice(self, start: int, stop: int) -> Batch:
        return Batch(self.sparse[start:stop], self.dense[start:stop], self.labels[start:stop])

    def to(self, device: torch.device, non_blocking: bool = False) -> SplitTensors:
        return SplitTensors(
            self.sparse.to(device, non_blocking=non_blocking),
            self.dense.to(device, non_blocking=non_blocking),
            self.labels.to(device, non_blocking=non_blocking),
        )

    def pin_memory(self) -> SplitTensors:
        return SplitTensors(
            self.sparse.pin_memory(), self.dense.pin_memory(), self.labels.pin_memory()
        )


def _check_numeric(path: Path, schema: pa.Schema, name: str, what: str, integer: bool) -> None:
    typ = schema.field(name).type
    ok = (
        pa.types.is_integer(typ)
        if integer
        else (pa.types.is_integer(typ) or pa.types.is_floating(typ) or pa.types.is_boolean(typ))
    )
    if not ok:
        need = "integer ids" if integer else "numbers"
        raise MtlrecError(f"{path}: {what} column '{name}' has type {typ}; it must hold {need}")


def _check_list(path: Path, schema: pa.Schema, name: str, what: str, integer: bool) -> None:
    typ = schema.field(name).type
    if not (pa.types.is_list(typ) or pa.types.is_large_list(typ)):
        raise MtlrecError(
            f"{path}: {what} column '{name}' has type {typ}; it must be a list column"
        )
    _check_numeric(path, pa.schema([pa.field(name, typ.value_type)]), name, what, integer)


def check_schema(path: Path, schema: pa.Schema, spec: DatasetSpec) -> None:
    """The split file holds every column the spec needs, with the right types (one line if not)."""
    missing = [c for c in spec.parquet_columns if c not in schema.names]
    if missing:
        raise MtlrecError(f"{path}: missing column(s) {missing} required by the dataset spec")
    for f in spec.sparse:
        _check_numeric(path, schema, f.name, "sparse", integer=True)
    for f in spec.dense:
        _check_numeric(path, schema, f.name, "dense", integer=False)
    for f in spec.multi:
        _check_list(path, schema, f.name, f.kind, integer=True)
        if f.weighted:
            _check_list(path, schema, f.name + WEIGHT_SUFFIX, "weight", integer=False)
    for c in spec.labels:
        _check_numeric(path, schema, c, "label", integer=False)


def load_split(
    path: Path,
    spec: DatasetSpec,
    tasks: tuple[TaskSpec, ...] = (),
    funnel_violations: str = "error",
) -> SplitTensors:
    """Read one prepared split and validate it against the spec (and the tasks trained on it).

    Rows breaking the funnel (mtlrec.data.funnel) are one error line with their counts, or, with
    `funnel_violations="drop"` (dataset.funnel_violations), dropped with a logged count.
    """
    path = Path(path)
    if not path.is_file():
        raise MtlrecError(
            f"{path}: split file not found; prepare the dataset first or fix dataset.path"
        )
    # Hashed (checksums.json) in a thread while it is decoded: a damaged file is that one line.
    with verified_read(path):
        try:
            schema = pq.read_schema(path)
            check_schema(path, schema, spec)
            # ParquetFile, not pq.read_table: one file needs no pyarrow.dataset (~0.4 s of import)
            with pq.ParquetFile(path) as parquet:
                table = parquet.read(columns=spec.parquet_columns)
        except (pa.ArrowException, OSError) as e:
            raise MtlrecError(f"{path}: not a readable parquet file ({e})") from None
        n = table.num_rows
        if n == 0:
            raise MtlrecError(f"{path}: the split is empty (0 rows)")
        sparse, dense, labels = encode_columns(
            path, spec, tasks, table.column, n, funnel_violations=funnel_violations
        )
    return SplitTensors(torch.from_numpy(sparse), torch.from_numpy(dense), torch.from_numpy(labels))


def encode_columns(
    path: Path,
    spec: DatasetSpec,
    tasks: tuple[TaskSpec, ...],
    column: Callable[[str], pa.Array | pa.ChunkedArray],
    n: int,
    log_oov: bool = True,
    funnel_violations: str = "error",
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validated (sparse fused ids, dense, labels) arrays from the spec's `n`-row columns of `path`.

    Shared by the in-memory loader (a whole table) and the streaming reader (one chunk at a time).
    With funnel_violations="drop", rows breaking the funnel are left out (fewer than `n` rows).
    """
    layout = spec.layout
    offsets = spec.vocab_offsets
    sparse = np.empty((n, layout.sparse_width), dtype=np.int64)
    dense = np.empty((n, layout.dense_width), dtype=np.float32)
    for f in spec.sparse:
        col = column(f.name)
        if col.null_count:
            raise MtlrecError(
                f"{path}: sparse column '{f.name}' has {col.null_count} missing values"
            )
        ids = col.to_numpy(zero_copy_only=False).astype(np.int64, copy=False)
        sparse[:, layout.sparse[f.name][0]] = _checked_ids(path, f, ids, log_oov) + offsets[f.name]
    for f in spec.multi:
        a, b = layout.sparse[f.name]
        values, rows, pos = _list_positions(path, f, column(f.name), n)
        ids = _checked_ids(path, f, values.astype(np.int64, copy=False), log_oov)
        block = np.full((n, f.max_len), PAD_ID, dtype=np.int64)
        block[rows, pos] = ids + offsets[f.name]
        sparse[:, a:b] = block
        if f.weighted:
            w_values, w_rows, w_pos = _list_positions(
                path, f, column(f.name + WEIGHT_SUFFIX), n, what="weights"
            )
            if not (np.array_equal(w_rows, rows) and np.array_equal(w_pos, pos)):
                raise MtlrecError(
                    f"{path}: column '{f.name}{WEIGHT_SUFFIX}' does not hold one weight per id of '{f.name}'"
                )
            c, d = layout.weights[f.name]
            weights = np.zeros((n, f.max_len), dtype=np.float32)
            weights[rows, pos] = w_values.astype(np.float32)
            if not np.isfinite(weights).all():
                raise MtlrecError(f"{path}: column '{f.name}{WEIGHT_SUFFIX}' has NaN/inf weights")
            dense[:, c:d] = weights

    for f in spec.dense:
        j = layout.dense[f.name][0]
        with np.errstate(over="ignore"):  # beyond float32's range -> inf, reported just below
            values = column(f.name).to_numpy(zero_copy_only=False).astype(np.float32)
        bad = ~np.isfinite(values)
        if bad.any():
            raise MtlrecError(
                f"{path}: dense column '{f.name}' has {bad.sum()} NaN/inf/missing values"
            )
        dense[:, j] = values

    labels = np.empty((n, len(spec.labels)), dtype=np.float32)
    for j, label in enumerate(spec.labels):
        with np.errstate(over="ignore"):
            values = column(label).to_numpy(zero_copy_only=False).astype(np.float32)
        bad = ~np.isfinite(values)
        if bad.any():
            raise MtlrecError(
                f"{path}: label column '{label}' has {bad.sum()} NaN/inf/missing values"
            )
        labels[:, j] = values
    _check_binary_labels(path, spec, tasks, labels)
    for weight in spec.weight_columns:
        negative = labels[:, spec.label_index(weight)] < 0
        if negative.any():
            raise MtlrecError(
                f"{path}: sample weight column '{weight}' has {negative.sum()} negative values (e.g. {labels[negative, spec.label_index(weight)][0]:g}); weights must be >= 0: prepare the dataset again"
            )
    keep = _funnel_keep(path, spec, tasks, labels, funnel_violations, log_drops=log_oov)
    if keep is not None:
        return sparse[keep], dense[keep], labels[keep]
    return sparse, dense, labels


def _checked_ids(path: Path, f: FeatureSpec, ids: np.ndarray, log_oov: bool) -> np.ndarray:
    """Per-field ids checked against the vocabulary (beyond it -> the oov id, or one error)."""
    if (ids < 0).any():
        raise MtlrecError(
            f"{path}: {f.kind} column '{f.name}' has {(ids < 0).sum()} negative ids (min {ids.min()}); ids must be >= 0"
        )
    beyond = ids >= f.vocab_size
    if beyond.any():
        if f.oov_id is None:
            raise MtlrecError(
                f"{path}: {f.kind} column '{f.name}' has {beyond.sum()} ids >= vocab_size {f.vocab_size} "
                f"(max {ids.max()}) and no oov_id in the spec"
            )
        if log_oov:
            log.warning(
                "%s: column '%s': %d ids beyond the vocabulary mapped to oov id %d",
                path.name,
                f.name,
                beyond.sum(),
                f.oov_id,
            )
        ids = np.where(beyond, f.oov_id, ids)
    return ids


def list_positions(
    source: str | Path, f: FeatureSpec, col: pa.Array | pa.ChunkedArray, n: int, what: str = "ids"
) -> tuple[pa.Array, np.ndarray, np.ndarray]:
    """(flat values, row of each value, position in its row) of a list column, no Python loop;
    a null row is an empty list, a row longer than `f.max_len` is one line naming `source`."""
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    if col.null_count:
        col = pc.fill_null(col, pa.scalar([], col.type))
    lengths = pc.list_value_length(col).to_numpy(zero_copy_only=False).astype(np.int64)
    if lengths.max(initial=0) > f.max_len:
        raise MtlrecError(
            f"{source}: {f.kind} column '{f.name}' has a row with {lengths.max()} {what}, more than max_len {f.max_len}"
        )
    rows = np.repeat(np.arange(n, dtype=np.int64), lengths)
    starts = np.cumsum(lengths) - lengths
    pos = np.arange(int(lengths.sum()), dtype=np.int64) - np.repeat(starts, lengths)
    return pc.list_flatten(col), rows, pos


def _list_positions(
    path: Path, f: FeatureSpec, col: pa.Array | pa.ChunkedArray, n: int, what: str = "ids"
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """list_positions of a prepared column, whose values must all be present."""
    flat, rows, pos = list_positions(path, f, col, n, what)
    if flat.null_count:
        raise MtlrecError(
            f"{path}: {f.kind} column '{f.name}' has {flat.null_count} missing {what}"
        )
    return flat.to_numpy(zero_copy_only=False), rows, pos


def _funnel_keep(
    path: Path,
    spec: DatasetSpec,
    tasks: tuple[TaskSpec, ...],
    labels: np.ndarray,
    policy: str,
    log_drops: bool = True,
) -> np.ndarray | None:
    """None when every row keeps the funnel; else the rows to keep (policy drop) or one error."""
    pairs = funnel.funnel_pairs(spec.funnel, tasks)
    if not pairs:
        return None
    funnel.check_policy(policy)
    bad, counts = funnel.violation_mask(
        lambda c: labels[:, spec.label_index(c)], pairs, labels.shape[0]
    )
    if not bad.any():
        return None
    if policy == "error":
        funnel.raise_violations(str(path), counts, labels.shape[0])
    if log_drops:
        log.warning("%s: dropped %s (funnel_violations=drop)", path, funnel.describe(counts))
    return ~bad


def _check_binary_labels(
    path: Path, spec: DatasetSpec, tasks: tuple[TaskSpec, ...], labels: np.ndarray
) -> None:
    binary_columns = {t.label for t in tasks if t.type == "binary"} | {
        t.where for t in tasks if t.where
    }
    if spec.funnel is not None:
        binary_columns |= set(spec.funnel.columns)
    for c in sorted(binary_columns):
        values = labels[:, spec.label_index(c)]
        bad = (values != 0) & (values != 1)
        if bad.any():
            example = values[bad][0]
            raise MtlrecError(
                f"{path}: label column '{c}' of a binary task has {bad.sum()} values outside {{0,1}} (e.g. {example:g})"
            )


def load_splits(
    directory: Path,
    spec: DatasetSpec,
    tasks: tuple[TaskSpec, ...],
    names=("train", "val", "test"),
    funnel_violations: str = "error",
) -> dict[str, SplitTensors]:
    directory = Path(directory)
    out = {}
    for name in names:
        if name not in spec.splits:
            raise MtlrecError(
                f"{directory / 'spec.json'}: no '{name}' split; the spec lists {sorted(spec.splits)}"
            )
        out[name] = load_split(directory / spec.splits[name], spec, tasks, funnel_violations)
    return out
