"""Reading raw files in blocks of bounded size: CSV/TSV (optionally gzipped) and parquet."""

from __future__ import annotations

import contextlib
import csv
import gzip
import io
import math
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from mtlrec.data.prepare.plan import Plan, RawSource, ReadOptions
from mtlrec.data.prepare.progress import tracked
from mtlrec.errors import MtlrecError


def file_format(path: Path, read: ReadOptions) -> str:
    if read.format != "auto":
        return read.format
    name = path.name.lower().removesuffix(".gz").removesuffix(".bz2")
    if name.endswith((".parquet", ".pq")):
        return "parquet"
    if name.endswith((".tsv", ".tab")):
        return "tsv"
    return "csv"


def _delimiter(fmt: str, read: ReadOptions) -> str:
    return read.delimiter or ("\t" if fmt == "tsv" else ",")


def header_columns(path: Path, read: ReadOptions) -> list[str]:
    """The column names of a raw file (header line, or dataset.column_names); no name twice."""
    names = _raw_header(path, read)
    seen: dict[str, int] = {}
    for i, name in enumerate(names):
        if name in seen:
            raise MtlrecError(
                f"{path}: column '{name}' appears twice (columns {seen[name] + 1} and {i + 1}); rename one of them"
            )
        seen[name] = i
    return names


def _raw_header(path: Path, read: ReadOptions) -> list[str]:
    fmt = file_format(path, read)
    if fmt == "parquet":
        try:
            return pq.read_schema(path).names
        except (pa.ArrowInvalid, OSError) as e:
            raise MtlrecError(f"{path}: not a readable parquet file ({e})") from None
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        # utf-8-sig: a byte-order mark (spreadsheet exports) is not part of the first name.
        with opener(path, "rt", newline="", encoding="utf-8-sig") as f:
            first = f.readline()
    except (OSError, EOFError, UnicodeDecodeError, zlib.error) as e:
        raise MtlrecError(f"{path}: cannot read the file ({e})") from None
    if not first.strip():
        raise MtlrecError(f"{path}: the raw file is empty (no header or data line)")
    if read.column_names:
        return list(read.column_names)
    return next(csv.reader(io.StringIO(first), delimiter=_delimiter(fmt, read)))


@dataclass
class Block:
    table: pa.Table  # raw columns (strings for CSV input)
    source_index: int
    first_row: int  # 0-based number of the block's first data row in its file
    header_lines: int  # 1 when the file has a header line

    def where(self, source: RawSource, i: int) -> str:
        """'line N' (CSV, 1-based, counting the header) or 'row N' (parquet) of row i of the block."""
        if source.path.name.lower().endswith((".parquet", ".pq")):
            return f"row {self.first_row + i + 1}"
        return f"line {self.header_lines + self.first_row + i + 1}"


def iter_blocks(plan: Plan, source_index: int, columns: list[str]) -> Iterator[Block]:
    """Stream the given raw columns of one source in blocks (bounded memory)."""
    source = plan.sources[source_index]
    path, read = source.path, plan.read
    have = header_columns(path, read)
    missing = [c for c in columns if c not in have]
    if missing:
        raise MtlrecError(
            f"{path}: column(s) {missing} not found; the file has {len(have)} columns: {have[:12]}{' ...' if len(have) > 12 else ''}"
        )
    if file_format(path, read) == "parquet":
        yield from tracked(_parquet_blocks(path, read, source_index, columns), path)
    else:
        yield from tracked(_csv_blocks(path, read, source_index, columns), path)


def _parquet_blocks(
    path: Path, read: ReadOptions, source_index: int, columns: list[str]
) -> Iterator[Block]:
    first_row = 0
    try:
        # Page checksums, where the writer stored them, catch damage that still decodes.
        pf = pq.ParquetFile(path, page_checksum_verification=True)
        if pf.metadata.num_rows == 0:
            raise MtlrecError(f"{path}: the raw file has no data rows")
        batch_rows = max(1024, int(read.block_size_mb * 2**20 / max(1, 8 * len(columns))))
        for batch in pf.iter_batches(batch_size=batch_rows, columns=columns):
            yield Block(pa.Table.from_batches([batch]), source_index, first_row, 0)
            first_row += batch.num_rows
    except (pa.ArrowException, OSError) as e:  # a damaged page behind an intact footer
        raise MtlrecError(
            f"{path}: not a readable parquet file from row {first_row + 1} on ({str(e).splitlines()[0]}); "
            "the file is damaged: write it again"
        ) from None


def _csv_blocks(
    path: Path, read: ReadOptions, source_index: int, columns: list[str]
) -> Iterator[Block]:
    bad: list[pacsv.InvalidRow] = []

    def on_invalid(row: pacsv.InvalidRow) -> str:
        bad.append(row)
        return "error"

    fmt = file_format(path, read)
    reader_opts = pacsv.ReadOptions(
        use_threads=False,  # serial parsing: invalid rows then carry their line number
        block_size=int(read.block_size_mb * 2**20),
        column_names=list(read.column_names) if read.column_names else None,
        skip_rows=1 if (read.header and read.column_names) else 0,
    )
    parse_opts = pacsv.ParseOptions(delimiter=_delimiter(fmt, read), invalid_row_handler=on_invalid)
    # Every column as a string: types are ours to check (a bad value gets its line number),
    # never inferred from the first block and then contradicted by a later one.
    convert_opts = pacsv.ConvertOptions(
        column_types={c: pa.string() for c in columns},
        include_columns=columns,
        strings_can_be_null=True,
        quoted_strings_can_be_null=True,
        null_values=[""],
    )
    header_lines = 1 if read.header else 0
    first_row = 0
    try:
        reader = pacsv.open_csv(
            path, read_options=reader_opts, parse_options=parse_opts, convert_options=convert_opts
        )
        for batch in reader:
            yield Block(pa.Table.from_batches([batch]), source_index, first_row, header_lines)
            first_row += batch.num_rows
    except pa.ArrowInvalid as e:
        if bad:
            row = bad[0]
            line = f"line {row.number}" if row.number is not None else "a row"
            raise MtlrecError(
                f"{path}: {line}: malformed row, expected {row.expected_columns} columns, got {row.actual_columns}: {row.text[:80]!r}"
            ) from None
        # One row does not fit in a read block (a header line longer than the block reads as
        # an "Empty CSV file" to pyarrow).
        if "straddl" in str(e) or "Empty CSV file" in str(e):
            raise _row_too_long(path, read.block_size_mb) from None
        raise MtlrecError(f"{path}: cannot parse the file ({str(e).splitlines()[0]})") from None
    except (OSError, EOFError, zlib.error) as e:
        raise MtlrecError(f"{path}: cannot read the file ({e})") from None
    if first_row == 0:
        raise MtlrecError(f"{path}: the raw file has no data rows")


def _row_too_long(path: Path, block_size_mb: float) -> MtlrecError:
    """The error for a row longer than the CSV reader's block: its line and the key to raise."""
    limit = int(block_size_mb * 2**20)
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    found = None
    with contextlib.suppress(OSError, EOFError, zlib.error), opener(path, "rb") as f:
        for number, line in enumerate(f, start=1):
            if len(line) > limit:
                found = number, len(line)
                break
    need = max(found[1] if found else limit * 2, limit * 2) / 2**20
    suggest = 2 ** math.ceil(math.log2(need * 2))
    what = "a row (with quoted line breaks) is"
    if found:
        n = found[1]
        size = f"{n / 2**20:.1f} MB" if n >= 2**20 / 10 else f"{n:,} bytes"
        what = f"line {found[0]}{' (the header)' if found[0] == 1 else ''} is {size} long"
    return MtlrecError(
        f"{path}: {what}, more than one read block (dataset.block_size_mb={block_size_mb:g}); "
        f"raise it, e.g. +dataset.block_size_mb={suggest:g}"
    )


def plan_blocks(plan: Plan, source_index: int) -> Iterator[Block]:
    for block in iter_blocks(plan, source_index, plan.needed_raw_columns()):
        if plan.transform is not None:
            block.table = plan.transform(block.table)
        yield block


def numeric(block: Block, source: RawSource, col: str, what: str) -> np.ndarray:
    """A column of the block as float64 (null -> NaN); a non-number is an error naming its line."""
    arr = block.table.column(col)
    if pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type):
        try:
            arr = pc.cast(pc.utf8_trim_whitespace(arr), pa.float64())
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            values = arr.to_pylist()
            for i, v in enumerate(values):
                if v is None:
                    continue
                try:
                    float(v)
                except ValueError:
                    raise MtlrecError(
                        f"{source.path}: {block.where(source, i)}: {what} column '{col}' holds {v[:40]!r}, not a number"
                    ) from None
            # Every value parses in Python (e.g. spellings arrow rejects): use Python's parse.
            return np.array([math.nan if v is None else float(v) for v in values], np.float64)
    elif not (
        pa.types.is_integer(arr.type)
        or pa.types.is_floating(arr.type)
        or pa.types.is_boolean(arr.type)
    ):
        raise MtlrecError(
            f"{source.path}: {what} column '{col}' has type {arr.type}; it must hold numbers"
        )
    return arr.to_numpy(zero_copy_only=False).astype(np.float64)
