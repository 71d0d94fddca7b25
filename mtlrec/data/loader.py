"""Prepared parquet -> contiguous tensors, validated on load; batches are index slices.

Each split becomes three tensors: `sparse` int64 [N, F] (ids already offset into one fused
embedding table), `dense` float32 [N, D] and `labels` float32 [N, L]. A batch is `split.take(idx)`:
one gather per tensor, no per-sample `__getitem__` and no collate.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from mtlrec.data import funnel
from mtlrec.data.spec import DatasetSpec, TaskSpec
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
    try:
        schema = pq.read_schema(path)
    except (pa.ArrowInvalid, OSError) as e:
        raise MtlrecError(f"{path}: not a readable parquet file ({e})") from None
    needed = [f.name for f in spec.features] + list(spec.labels)
    missing = [c for c in needed if c not in schema.names]
    if missing:
        raise MtlrecError(f"{path}: missing column(s) {missing} required by the dataset spec")
    for f in spec.sparse:
        _check_numeric(path, schema, f.name, "sparse", integer=True)
    for f in spec.dense:
        _check_numeric(path, schema, f.name, "dense", integer=False)
    for c in spec.labels:
        _check_numeric(path, schema, c, "label", integer=False)

    table = pq.read_table(path, columns=needed)
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
    sparse = np.empty((n, len(spec.sparse)), dtype=np.int64)
    for j, (f, offset) in enumerate(zip(spec.sparse, spec.field_offsets, strict=True)):
        col = column(f.name)
        if col.null_count:
            raise MtlrecError(
                f"{path}: sparse column '{f.name}' has {col.null_count} missing values"
            )
        ids = col.to_numpy(zero_copy_only=False).astype(np.int64, copy=False)
        if (ids < 0).any():
            raise MtlrecError(
                f"{path}: sparse column '{f.name}' has {(ids < 0).sum()} negative ids (min {ids.min()}); ids must be >= 0"
            )
        beyond = ids >= f.vocab_size
        if beyond.any():
            if f.oov_id is None:
                raise MtlrecError(
                    f"{path}: sparse column '{f.name}' has {beyond.sum()} ids >= vocab_size {f.vocab_size} "
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
        sparse[:, j] = ids + offset

    dense = np.empty((n, len(spec.dense)), dtype=np.float32)
    for j, f in enumerate(spec.dense):
        with np.errstate(over="ignore"):  # beyond float32's range -> inf, reported just below
            values = column(f.name).to_numpy(zero_copy_only=False).astype(np.float32)
        bad = ~np.isfinite(values)
        if bad.any():
            raise MtlrecError(
                f"{path}: dense column '{f.name}' has {bad.sum()} NaN/inf/missing values"
            )
        dense[:, j] = values

    labels = np.empty((n, len(spec.labels)), dtype=np.float32)
    for j, c in enumerate(spec.labels):
        with np.errstate(over="ignore"):
            values = column(c).to_numpy(zero_copy_only=False).astype(np.float32)
        bad = ~np.isfinite(values)
        if bad.any():
            raise MtlrecError(f"{path}: label column '{c}' has {bad.sum()} NaN/inf/missing values")
        labels[:, j] = values
    _check_binary_labels(path, spec, tasks, labels)
    keep = _funnel_keep(path, spec, tasks, labels, funnel_violations, log_drops=log_oov)
    if keep is not None:
        return sparse[keep], dense[keep], labels[keep]
    return sparse, dense, labels


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
        binary_columns |= {
            c
            for c in (spec.funnel.click, spec.funnel.conversion, spec.funnel.conversion_if_clicked)
            if c
        }
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
