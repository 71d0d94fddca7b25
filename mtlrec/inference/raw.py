"""Raw input of `mtlrec predict`: the run's dataset encoders, found and checked against the model,
applied to the raw file block by block exactly as `mtlrec prepare` encoded its rows."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch

from mtlrec.data.encoders import ENCODERS_FILE, RawEncoder
from mtlrec.data.spec import SPEC_FILE, DatasetSpec
from mtlrec.dataset_settings import saved_dataset
from mtlrec.errors import MtlrecError
from mtlrec.inference.inputs import Chunk, is_parquet
from mtlrec.training.binding import NotThisRun, check_dataset


def dataset_dir_of(payload: dict, run_dir: str | Path) -> Path:
    """The prepared dataset dir the run trained on (its config's dataset.path), if still there."""
    path = saved_dataset(payload.get("config")).path
    if path is None:
        raise MtlrecError(
            f"{run_dir}: the run's config names no dataset.path, so the encoders of its dataset "
            "cannot be found; score prepared parquet rows instead"
        )
    if not (path / SPEC_FILE).is_file():
        raise MtlrecError(
            f"{path}: the dataset dir of run {run_dir} is gone, and raw input needs its "
            f"{ENCODERS_FILE}; prepare the dataset there again with the run's config, or score "
            "prepared parquet rows"
        )
    return path


def load_encoder(payload: dict, run_dir: str | Path, spec: DatasetSpec) -> RawEncoder:
    """The encoders of the run's dataset, refused when the dataset was prepared again with other
    features (its raw rows would be encoded into ids the model never learnt)."""
    encoder = RawEncoder.load(dataset_dir_of(payload, run_dir))
    if encoder.spec.features != spec.features:
        pairs = zip(spec.features, encoder.spec.features, strict=False)
        first = next(((a.name, b.name) for a, b in pairs if a != b), "the number of features")
        raise MtlrecError(
            f"{encoder.dataset_dir / SPEC_FILE}: the dataset now has other features than run "
            f"{run_dir} was trained on (first difference: {first}); raw rows cannot be encoded "
            "as in training: prepare it again with the run's config, or score prepared rows"
        )
    # Same features, but maybe prepared again with other ids: the fingerprint tells.
    check_dataset(payload, Path(str(payload.get("path") or run_dir)), encoder.dataset_dir)
    return encoder


def try_encoder(payload: dict, run_dir: str | Path, spec: DatasetSpec) -> RawEncoder | None:
    """load_encoder's encoders, or None where it would refuse them."""
    try:
        return load_encoder(payload, run_dir, spec)
    except NotThisRun:
        raise  # the dataset was prepared again: no guess from the column types
    except MtlrecError:
        return None


def raw_chunks(encoder: RawEncoder, path: Path, id_columns: Sequence[str]) -> Iterator[Chunk]:
    """The raw file's rows encoded for the model, one read block at a time, in file order."""
    from mtlrec.data.prepare.reading import header_columns

    read = encoder.plan.read
    # The input's own format by its name; the delimiter, header and column names are the dataset's.
    fmt = "parquet" if is_parquet(path) else ("auto" if read.format == "parquet" else read.format)
    encoder.plan.read = dataclasses.replace(read, format=fmt)
    have = header_columns(path, encoder.plan.read)
    missing = [c for c in id_columns if c not in have]
    if missing:
        raise MtlrecError(f"{path}: has no column(s) {missing} asked for by --id-columns")
    for block in encoder.file_blocks(path, id_columns):
        sparse, dense, _ = encoder.encode(block)
        ids = block.table.select(list(id_columns))
        yield Chunk(torch.from_numpy(sparse), torch.from_numpy(dense), ids)


def summary_line(path: Path, encoder: RawEncoder) -> str:
    """One line: rows encoded, values mapped to the OOV id and cells cut to max_len, per field."""
    report = encoder.report()
    oov = ", ".join(f"{k} {v:,}" for k, v in report.oov.items() if v) or "none"
    cut = ", ".join(f"{k} {v:,}" for k, v in report.truncated.items() if v)
    return (
        f"{path}: {report.rows:,} rows of raw values encoded with "
        f"{encoder.dataset_dir / ENCODERS_FILE}; unseen values mapped to the OOV id: {oov}"
        + (f"; rows cut to max_len: {cut}" if cut else "")
    )
