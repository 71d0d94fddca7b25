"""`mtlrec predict`: score a parquet file in streamed batches, written atomically, never over
another file (unless asked) and never over its own input."""

from __future__ import annotations

import errno
import logging
import os
import secrets
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from mtlrec.data.spec import DatasetSpec
from mtlrec.errors import MtlrecError
from mtlrec.inference.loading import load_run
from mtlrec.models.base import MultiTaskModel
from mtlrec.training.checkpoint import BEST, model_from_checkpoint

log = logging.getLogger(__name__)

TEMP_TAG = ".predict-"  # temp file: .<output name>.predict-<pid>-<random>.tmp next to the output


def encode_features(
    batch: pa.RecordBatch | pa.Table, spec: DatasetSpec, source: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Feature columns -> (fused sparse ids [B, F] int64, dense [B, D] float32) for inference.

    Unseen categorical values (null, negative or >= vocab_size) map to the feature's `oov_id`; a
    feature without one cannot score them and fails naming the column.
    """
    n = batch.num_rows
    sparse = np.empty((n, len(spec.sparse)), dtype=np.int64)
    for j, (f, offset) in enumerate(zip(spec.sparse, spec.field_offsets, strict=True)):
        col = batch.column(f.name)
        valid = ~np.asarray(col.is_null().to_numpy(zero_copy_only=False), dtype=bool)
        ids = np.asarray(col.fill_null(0).to_numpy(zero_copy_only=False)).astype(np.int64)
        unseen = ~valid | (ids < 0) | (ids >= f.vocab_size)
        if unseen.any():
            if f.oov_id is None:
                bad = ids[unseen & valid]
                example = "null" if not len(bad) else int(bad[0])
                raise MtlrecError(
                    f"{source}: sparse column '{f.name}' has {int(unseen.sum())} values outside "
                    f"[0, {f.vocab_size}) (e.g. {example}) and the feature spec has no oov_id to map them to"
                )
            ids = np.where(unseen, f.oov_id, ids)
        sparse[:, j] = ids + offset
    dense = np.empty((n, len(spec.dense)), dtype=np.float32)
    for j, f in enumerate(spec.dense):
        values = np.asarray(batch.column(f.name).to_numpy(zero_copy_only=False), dtype=np.float32)
        bad = ~np.isfinite(values)
        if bad.any():
            raise MtlrecError(
                f"{source}: dense column '{f.name}' has {int(bad.sum())} NaN/inf/missing values"
            )
        dense[:, j] = values
    return torch.from_numpy(sparse), torch.from_numpy(dense)


@torch.no_grad()
def score(
    model: MultiTaskModel, sparse: torch.Tensor, dense: torch.Tensor
) -> dict[str, np.ndarray]:
    """Every model output for a batch: probabilities for binary outputs, values for regression."""
    out = model(sparse, dense)
    return {
        name: (torch.sigmoid(out[name].float()) if kind == "binary" else out[name].float()).numpy()
        for name, kind in model.output_types.items()
    }


def predict(
    run_dir: str | Path,
    input_path: str | Path,
    output_path: str | Path,
    batch_size: int = 65536,
    id_columns: Sequence[str] = (),
    checkpoint: str = BEST,
    overwrite: bool = False,
) -> tuple[int, list[str]]:
    """Score a parquet file in streamed batches (memory bounded by `batch_size` rows)."""
    if batch_size < 1:
        raise MtlrecError(f"--batch-size must be >= 1, got {batch_size}")
    input_path, output_path = Path(input_path).expanduser(), Path(output_path).expanduser()
    if not input_path.is_file():
        raise MtlrecError(f"{input_path}: input file not found")
    check_output(input_path, output_path, overwrite)
    payload, _ = load_run(run_dir, checkpoint)
    model, spec, _ = model_from_checkpoint(payload)
    outputs = list(model.output_types)
    reader = open_input(input_path, spec, id_columns, outputs)
    remove_stale_temps(output_path)
    tmp = output_path.with_name(
        f".{output_path.name}{TEMP_TAG}{os.getpid()}-{secrets.token_hex(4)}.tmp"
    )
    try:
        rows = write_predictions(reader, model, spec, input_path, id_columns, tmp, batch_size)
        publish(tmp, output_path, overwrite)
    finally:
        tmp.unlink(missing_ok=True)
    return rows, outputs


def check_output(input_path: Path, output_path: Path, overwrite: bool) -> None:
    """Refuse, before any work, an output that is a directory, the input itself, or (without
    --overwrite) an existing file."""
    if output_path.is_dir():
        raise MtlrecError(
            f"--output {output_path}: is a directory; name a file, e.g. "
            f"{output_path / 'predictions.parquet'}"
        )
    if output_path.exists() and os.path.samefile(output_path, input_path):
        raise MtlrecError(
            f"--output {output_path} is the --input file; write the predictions to another file"
        )
    if output_path.exists() and not overwrite:
        raise MtlrecError(f"--output {output_path}: already exists; pass --overwrite to replace it")
    if not output_path.parent.is_dir():
        raise MtlrecError(f"{output_path.parent}: output directory does not exist")


def open_input(
    input_path: Path, spec: DatasetSpec, id_columns: Sequence[str], outputs: list[str]
) -> pq.ParquetFile:
    """The input as a streamed parquet reader, once its columns and types fit the model."""
    try:
        reader = pq.ParquetFile(input_path)
    except (pa.ArrowInvalid, OSError) as e:
        raise MtlrecError(f"{input_path}: not a readable parquet file ({e})") from None
    names = reader.schema_arrow.names
    clash = sorted(set(id_columns) & set(outputs))
    if clash:
        raise MtlrecError(f"--id-columns {clash} clash with the model's output columns {outputs}")
    missing = [f.name for f in spec.features if f.name not in names]
    if missing:
        raise MtlrecError(
            f"{input_path}: missing column(s) {missing} that the model needs as input features"
        )
    missing = [c for c in id_columns if c not in names]
    if missing:
        raise MtlrecError(f"{input_path}: has no column(s) {missing} asked for by --id-columns")
    for f in spec.features:
        typ = reader.schema_arrow.field(f.name).type
        ok = (
            pa.types.is_integer(typ)
            if f.kind == "sparse"
            else pa.types.is_integer(typ) or pa.types.is_floating(typ) or pa.types.is_boolean(typ)
        )
        if not ok:
            need = "integer ids" if f.kind == "sparse" else "numbers"
            raise MtlrecError(
                f"{input_path}: {f.kind} column '{f.name}' has type {typ}; it must hold {need}"
            )
    return reader


def write_predictions(
    reader: pq.ParquetFile,
    model: MultiTaskModel,
    spec: DatasetSpec,
    input_path: Path,
    id_columns: Sequence[str],
    tmp: Path,
    batch_size: int,
) -> int:
    """Score every batch of `reader` into the parquet file `tmp`; returns the number of rows."""
    outputs = list(model.output_types)
    columns = list(dict.fromkeys([*(f.name for f in spec.features), *id_columns]))
    rows, writer = 0, None
    from mtlrec.inference.progress import RowsBar

    bar = RowsBar("predict", reader.metadata.num_rows)
    try:
        for batch in bar.track(reader.iter_batches(batch_size=batch_size, columns=columns)):
            sparse, dense = encode_features(batch, spec, f"{input_path} (rows from {rows})")
            preds = score(model, sparse, dense)
            table = pa.table(
                {
                    **{c: batch.column(c) for c in id_columns},
                    **{name: pa.array(preds[name], type=pa.float32()) for name in outputs},
                }
            )
            if writer is None:
                writer = pq.ParquetWriter(tmp, table.schema)
            writer.write_table(table)
            rows += batch.num_rows
        if writer is None:  # an empty input: an empty output with the right columns
            schema = pa.schema(
                [reader.schema_arrow.field(c) for c in id_columns]
                + [pa.field(n, pa.float32()) for n in outputs]
            )
            writer = pq.ParquetWriter(tmp, schema)
    finally:
        bar.close()
        if writer is not None:
            writer.close()
    return rows


def publish(tmp: Path, output_path: Path, overwrite: bool) -> None:
    """Move the finished file into place. Without --overwrite a hard link publishes it, so a file
    that appeared at the output path meanwhile is refused rather than replaced."""
    if overwrite:
        os.replace(tmp, output_path)
        return
    try:
        os.link(tmp, output_path)
    except FileExistsError:
        raise MtlrecError(
            f"--output {output_path}: appeared while predicting; pass --overwrite to replace it"
        ) from None
    except OSError as e:  # a file system without hard links: check, then rename
        if e.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
            raise
        if output_path.exists():
            raise MtlrecError(f"--output {output_path}: already exists; pass --overwrite") from None
        os.replace(tmp, output_path)


def remove_stale_temps(output_path: Path) -> list[Path]:
    """Delete the temp files that killed predict processes left next to `output_path`."""
    removed = []
    for path in output_path.parent.glob(f".*{TEMP_TAG}*.tmp"):
        pid_text = path.name.rsplit(TEMP_TAG, 1)[1].split("-", 1)[0]
        if not pid_text.isdigit() or _alive(int(pid_text)):
            continue
        path.unlink(missing_ok=True)
        removed.append(path)
        log.warning("removed %s, left by predict process %s that no longer runs", path, pid_text)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True
