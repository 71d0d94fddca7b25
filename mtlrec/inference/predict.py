"""`mtlrec predict`: score prepared rows or raw values in streamed batches, written atomically,
never over another file (unless asked) and never over its own input."""

from __future__ import annotations

import errno
import itertools
import logging
import os
import secrets
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from mtlrec.data.encoders import RawEncoder
from mtlrec.data.spec import DatasetSpec
from mtlrec.errors import MtlrecError
from mtlrec.inference.inputs import (
    Chunk,
    check_prepared,
    holds_raw_values,
    is_parquet,
    prepared_chunks,
)
from mtlrec.inference.loading import load_run
from mtlrec.inference.raw import load_encoder, raw_chunks, summary_line, try_encoder
from mtlrec.models.base import MultiTaskModel
from mtlrec.outputs import check_output as guard_output
from mtlrec.outputs import inject_fault, writing
from mtlrec.ranking.record import FusionRecord
from mtlrec.training.binding import check_dataset
from mtlrec.training.checkpoint import BEST, model_from_checkpoint

log = logging.getLogger(__name__)
SCORE = "score"  # the fused score column of --fusion

TEMP_TAG = ".predict-"  # temp file: .<output name>.predict-<pid>-<random>.tmp next to the output


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


@dataclass
class Prediction:
    """What predict wrote: rows, output columns and (raw input) the encoding summary line."""

    rows: int
    outputs: list[str]
    raw_summary: str | None = None


@dataclass
class Source:
    """The input as encoded chunks in row order, with its row count (None: not known ahead)."""

    chunks: Iterator[Chunk]
    total: int | None
    id_schema: pa.Schema
    encoder: RawEncoder | None = None


def predict(
    run_dir: str | Path,
    input_path: str | Path,
    output_path: str | Path,
    batch_size: int = 65536,
    id_columns: Sequence[str] = (),
    checkpoint: str = BEST,
    overwrite: bool = False,
    raw: bool = False,
) -> tuple[int, list[str]]:
    """Score a parquet/CSV file in streamed batches: (rows, output columns); see predict_file."""
    done = predict_file(
        run_dir, input_path, output_path, batch_size, id_columns, checkpoint, overwrite, raw
    )
    return done.rows, done.outputs


def predict_file(
    run_dir: str | Path,
    input_path: str | Path,
    output_path: str | Path,
    batch_size: int = 65536,
    id_columns: Sequence[str] = (),
    checkpoint: str = BEST,
    overwrite: bool = False,
    raw: bool = False,
    fusion: str | None = None,
) -> Prediction:
    """Score prepared rows or raw values (`raw`, or told apart as mtlrec.inference.inputs says)
    in batches of exactly `batch_size` rows (memory bounded), written atomically to a parquet file.
    `fusion` names a record of `mtlrec fuse` (RUN/fusion/<name>.json): a `score` column is added."""
    if batch_size < 1:
        raise MtlrecError(f"--batch-size must be >= 1, got {batch_size}")
    input_path, output_path = Path(input_path).expanduser(), Path(output_path).expanduser()
    if not input_path.is_file():
        raise MtlrecError(f"{input_path}: input file not found")
    check_output(input_path, output_path, overwrite)
    payload, ckpt = load_run(run_dir, checkpoint)
    model, spec, _ = model_from_checkpoint(payload)
    outputs = list(model.output_types)
    fused = fusion_of(run_dir, fusion, ckpt, outputs)
    if fused is not None:
        outputs.append(SCORE)
    clash = sorted(set(id_columns) & set(outputs))
    if clash:
        raise MtlrecError(f"--id-columns {clash} clash with the model's output columns {outputs}")
    source = open_source(input_path, payload, run_dir, spec, id_columns, batch_size, raw)
    remove_stale_temps(output_path)
    tmp = output_path.with_name(
        f".{output_path.name}{TEMP_TAG}{os.getpid()}-{secrets.token_hex(4)}.tmp"
    )
    try:
        with writing(output_path, temps=[tmp]):
            inject_fault(output_path)
            rows = write_predictions(source, model, tmp, batch_size, fused)
            publish(tmp, output_path, overwrite)
    finally:
        tmp.unlink(missing_ok=True)
    summary = None if source.encoder is None else summary_line(input_path, source.encoder)
    return Prediction(rows, outputs, summary)


def check_output(input_path: Path, output_path: Path, overwrite: bool) -> None:
    """Refuse, before any work, an output that is a directory, the input itself, a file in a run
    dir / prepared dataset / export (mtlrec.outputs), or (without --overwrite) an existing file."""
    guard_output(
        output_path,
        "--output",
        {"--input": input_path},
        overwrite,
        what="predictions",
        example="predictions.parquet",
    )


def open_source(
    input_path: Path,
    payload: dict,
    run_dir: str | Path,
    spec: DatasetSpec,
    id_columns: Sequence[str],
    batch_size: int,
    raw: bool,
) -> Source:
    """The input as chunks: prepared rows read as they are, raw values through the encoders."""
    reader, encoder = None, None
    if is_parquet(input_path):
        try:
            reader = pq.ParquetFile(input_path)
        except (pa.ArrowInvalid, OSError) as e:
            raise MtlrecError(f"{input_path}: not a readable parquet file ({e})") from None
        if not raw and holds_raw_values(reader.schema_arrow, spec):
            # A dataset without raw form: the column's type is the mistake (check_prepared).
            encoder = try_encoder(payload, run_dir, spec)
            raw = encoder is not None
    if reader is not None and not raw:
        schema = reader.schema_arrow
        check_prepared(input_path, schema, spec)
        # A split of a prepared dataset: the one the model was trained on (not one prepared again).
        check_dataset(payload, Path(str(payload.get("path") or run_dir)), input_path.parent)
        missing = [c for c in id_columns if c not in schema.names]
        if missing:
            raise MtlrecError(f"{input_path}: has no column(s) {missing} asked for by --id-columns")
        chunks = prepared_chunks(reader, spec, input_path, id_columns, batch_size)
        id_schema = pa.schema([schema.field(c) for c in id_columns])
        return Source(chunks, reader.metadata.num_rows, id_schema)
    encoder = encoder or load_encoder(payload, run_dir, spec)
    chunks = raw_chunks(encoder, input_path, id_columns)
    first = next(chunks, None)  # reads the header and the first block: errors before any output
    if first is None:
        raise MtlrecError(f"{input_path}: the raw file has no data rows")
    total = reader.metadata.num_rows if reader is not None else None
    return Source(itertools.chain([first], chunks), total, first.ids.schema, encoder)


def fixed_batches(chunks: Iterator[Chunk], size: int) -> Iterator[Chunk]:
    """The rows of `chunks` regrouped into batches of exactly `size` rows (the last: the rest),
    so the same rows are scored in the same batches whatever the input's blocks were."""
    pending: list[Chunk] = []
    have = 0
    for chunk in chunks:
        pending.append(chunk)
        have += len(chunk)
        while have >= size:
            whole = _concat(pending)
            yield Chunk(whole.sparse[:size], whole.dense[:size], whole.ids.slice(0, size))
            rest = Chunk(whole.sparse[size:], whole.dense[size:], whole.ids.slice(size))
            pending, have = [rest], have - size
    if have:
        yield _concat(pending)


def _concat(chunks: list[Chunk]) -> Chunk:
    if len(chunks) == 1:
        return chunks[0]
    return Chunk(
        torch.cat([c.sparse for c in chunks]),
        torch.cat([c.dense for c in chunks]),
        pa.concat_tables([c.ids for c in chunks]),
    )


def fusion_of(
    run_dir: str | Path, name: str | None, ckpt: Path, outputs: list[str]
) -> FusionRecord | None:
    """The run's fusion record `name`, checked to belong to this checkpoint (None: no fusion)."""
    if name is None:
        return None
    from mtlrec.ranking.record import check_applies, read_record

    record = read_record(run_dir, name)
    check_applies(record, ckpt, outputs)
    if SCORE in outputs:
        raise MtlrecError(
            f"the model has an output named '{SCORE}': it cannot take the fused score"
        )
    return record


def write_predictions(
    source: Source,
    model: MultiTaskModel,
    tmp: Path,
    batch_size: int,
    fusion: FusionRecord | None = None,
) -> int:
    """Score every batch of `source` into the parquet file `tmp`; returns the number of rows.
    With `fusion`, the fused score of the task probabilities is the last column, `score`."""
    from mtlrec.inference.progress import RowsBar

    outputs = list(model.output_types) + ([SCORE] if fusion is not None else [])
    head = fusion.head() if fusion is not None else None
    schema = pa.schema([*source.id_schema, *(pa.field(n, pa.float32()) for n in outputs)])
    rows = 0
    bar = RowsBar("predict", source.total)
    writer = pq.ParquetWriter(tmp, schema)
    try:
        for batch in fixed_batches(source.chunks, batch_size):
            preds = score(model, batch.sparse, batch.dense)
            if head is not None and fusion is not None:
                probs = torch.from_numpy(np.stack([preds[t] for t in fusion.tasks], axis=1))
                with torch.no_grad():
                    preds[SCORE] = head(probs).numpy()
            columns = [*batch.ids.columns, *(pa.array(preds[n], pa.float32()) for n in outputs)]
            writer.write_table(pa.Table.from_arrays(columns, schema=schema))
            rows += len(batch)
            bar.advance(len(batch))
    finally:
        bar.close()
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
