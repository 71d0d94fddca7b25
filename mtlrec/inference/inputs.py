"""What `mtlrec predict` scores: prepared rows (the layout's encoded columns) or raw values, both
turned into the model's (sparse, dense) tensors in the dataset spec's full column layout.

The rule telling the two apart (docs/inference.md): a CSV/TSV input always holds raw values; a
parquet input holds prepared rows unless one of its categorical feature columns (sparse, bag,
sequence) holds something other than integer ids (text, lists of text); `--raw` says so when the
raw categorical values are integers themselves (they would look like prepared ids).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from mtlrec.data.loader import list_positions
from mtlrec.data.spec import PAD_ID, WEIGHT_SUFFIX, DatasetSpec, FeatureSpec
from mtlrec.errors import MtlrecError

PARQUET_SUFFIXES = (".parquet", ".pq")


@dataclass
class Chunk:
    """Encoded rows in input order: the model's inputs and the --id-columns copied to the output."""

    sparse: torch.Tensor  # int64 [n, C] fused ids (spec.layout)
    dense: torch.Tensor  # float32 [n, E]
    ids: pa.Table  # the --id-columns of these rows

    def __len__(self) -> int:
        return self.sparse.shape[0]


def is_parquet(path: Path) -> bool:
    return path.name.lower().endswith(PARQUET_SUFFIXES)


def holds_raw_values(schema: pa.Schema, spec: DatasetSpec) -> bool:
    """True when a categorical feature column of a parquet file holds something else than ids."""
    for f in spec.features:
        if f.kind == "dense" or f.name not in schema.names:
            continue
        if not _is_ids(schema.field(f.name).type, f.multi):
            return True
    return False


def _is_ids(typ: pa.DataType, multi: bool) -> bool:
    """Integer ids (multi: a list of them), the type prepared rows have."""
    if multi:
        return (pa.types.is_list(typ) or pa.types.is_large_list(typ)) and pa.types.is_integer(
            typ.value_type
        )
    return pa.types.is_integer(typ)


def prepared_columns(spec: DatasetSpec) -> list[str]:
    """The columns prepared rows hold for the model's inputs (features, weights of weighted bags)."""
    return [f.name for f in spec.features] + [
        f.name + WEIGHT_SUFFIX for f in spec.multi if f.weighted
    ]


def check_prepared(path: Path, schema: pa.Schema, spec: DatasetSpec) -> None:
    """Every input column is there with a type prepared rows have (one line if not)."""
    missing = [c for c in prepared_columns(spec) if c not in schema.names]
    if missing:
        raise MtlrecError(
            f"{path}: missing column(s) {missing} that the model needs as input features"
        )
    for f in spec.features:
        typ = schema.field(f.name).type
        if f.kind != "dense":
            ok, need = _is_ids(typ, f.multi), "lists of integer ids" if f.multi else "integer ids"
        else:
            ok = pa.types.is_integer(typ) or pa.types.is_floating(typ) or pa.types.is_boolean(typ)
            need = "numbers"
        if not ok:
            raise MtlrecError(
                f"{path}: {f.kind} column '{f.name}' has type {typ}; it must hold {need}"
            )
    for f in spec.multi:
        typ = schema.field(f.name + WEIGHT_SUFFIX).type if f.weighted else pa.list_(pa.float32())
        if not (pa.types.is_list(typ) or pa.types.is_large_list(typ)) or not (
            pa.types.is_floating(typ.value_type) or pa.types.is_integer(typ.value_type)
        ):
            raise MtlrecError(
                f"{path}: weight column '{f.name}{WEIGHT_SUFFIX}' has type {typ}; it must hold lists of numbers"
            )


def encode_features(
    batch: pa.RecordBatch | pa.Table, spec: DatasetSpec, source: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Prepared feature columns -> (fused ids [B, C] int64, dense [B, E] float32), spec.layout.

    Unseen ids (null, negative or >= vocab_size) map to the feature's `oov_id`; a feature without
    one cannot score them and fails naming the column. Bag/sequence columns are padded with -1,
    the weights of weighted bags with 0, exactly as the training loader lays them out.
    """
    layout, offsets, n = spec.layout, spec.vocab_offsets, batch.num_rows
    sparse = np.full((n, layout.sparse_width), PAD_ID, dtype=np.int64)
    dense = np.zeros((n, layout.dense_width), dtype=np.float32)
    for f in spec.sparse:
        ids, unseen = _ids(batch.column(f.name))
        sparse[:, layout.sparse[f.name][0]] = _known(f, ids, unseen, source) + offsets[f.name]
    for f in spec.multi:
        values, rows, pos = list_positions(source, f, batch.column(f.name), n)
        ids, unseen = _ids(values)
        a = layout.sparse[f.name][0]
        sparse[rows, a + pos] = _known(f, ids, unseen, source) + offsets[f.name]
        if f.weighted:
            column = f.name + WEIGHT_SUFFIX
            w, w_rows, w_pos = list_positions(source, f, batch.column(column), n, "weights")
            if not (np.array_equal(w_rows, rows) and np.array_equal(w_pos, pos)):
                raise MtlrecError(
                    f"{source}: column '{column}' does not hold one weight per id of '{f.name}'"
                )
            w = _finite(w, f"{source}: column '{column}'", "weights")
            dense[rows, layout.weights[f.name][0] + pos] = w
    for f in spec.dense:
        values = np.asarray(batch.column(f.name).to_numpy(zero_copy_only=False))
        where = f"{source}: dense column '{f.name}'"
        dense[:, layout.dense[f.name][0]] = _finite(values, where, "NaN/inf/missing values")
    return torch.from_numpy(sparse), torch.from_numpy(dense)


def _finite(values: np.ndarray, where: str, what: str) -> np.ndarray:
    with np.errstate(over="ignore"):  # beyond float32's range -> inf, reported just below
        values = np.asarray(values, dtype=np.float32)
    bad = ~np.isfinite(values)
    if bad.any():
        raise MtlrecError(f"{where} has {int(bad.sum())} {what}")
    return values


def _ids(col: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """(int64 ids with nulls as 0, mask of the nulls)."""
    null = np.asarray(col.is_null().to_numpy(zero_copy_only=False), dtype=bool)
    ids = np.asarray(col.fill_null(0).to_numpy(zero_copy_only=False)).astype(np.int64)
    return ids, null


def _known(f: FeatureSpec, ids: np.ndarray, null: np.ndarray, source: str) -> np.ndarray:
    unseen = null | (ids < 0) | (ids >= f.vocab_size)
    if not unseen.any():
        return ids
    if f.oov_id is None:
        bad = ids[unseen & ~null]
        example = "null" if not len(bad) else int(bad[0])
        raise MtlrecError(
            f"{source}: {f.kind} column '{f.name}' has {int(unseen.sum())} values outside "
            f"[0, {f.vocab_size}) (e.g. {example}) and the feature spec has no oov_id to map them to"
        )
    return np.where(unseen, f.oov_id, ids)


def prepared_chunks(
    reader: pq.ParquetFile, spec: DatasetSpec, path: Path, id_columns: Sequence[str], rows: int
) -> Iterator[Chunk]:
    """The prepared rows of `reader`, `rows` at a time, encoded for the model."""
    columns = list(dict.fromkeys([*prepared_columns(spec), *id_columns]))
    start = 0
    for batch in reader.iter_batches(batch_size=rows, columns=columns):
        sparse, dense = encode_features(batch, spec, f"{path} (rows from {start})")
        ids = pa.Table.from_batches([batch]).select(list(id_columns))
        yield Chunk(sparse, dense, ids)
        start += batch.num_rows
