"""`mtlrec prepare`: raw files -> a prepared dataset (split parquet files + spec.json + vocab.parquet).

    mtlrec prepare dataset=census dataset.raw_dir=../shared/data/census-income-kdd
    mtlrec prepare --config-dir my_conf dataset=my_data          # bring-your-own CSV
    mtlrec prepare dataset=census overwrite=true                 # prepare again over an old copy

The dataset config (conf/dataset/NAME.yaml, or the user's own) is the one `mtlrec train` reads:
`path` is where the prepared dataset lives; the raw-file keys next to it say how to build it.

Pipeline (bounded memory: only vocabularies and a few numbers per dense column are held; rows
stream through in blocks of `block_size_mb`, default 1 MB: pyarrow's CSV reader keeps ~32 blocks
in flight, so bigger blocks cost memory, not much speed; see scripts/bench_prepare.py):

    pass 1 (fit, train rows only):  value counts per sparse field; count, sum, sum of squares,
                                    min, max per dense column (and of log1p for log1p_standardize)
    pass 2 (encode, every row):     sparse value -> id, dense fill + transform, label checks,
                                    one parquet writer per split

Sparse ids: values seen at least `min_count` times in the train split get ids 1..V (most frequent
first, ties by value); id 0 is the field's one out-of-vocabulary id, shared by rare values, values
never seen in train and (after `""`-filling) missing values that are rare. vocab_size = V + 1.

Dense transforms (statistics from the train split only, after the fill value replaced missing
values; the fill value is in raw units):
    none               x
    standardize        (x - mean) / std                     (std = 0 -> 1)
    log1p_standardize  (log(1 + x) - mean_l) / std_l        (needs x > -1)
    minmax             (x - min) / (max - min)              (max = min -> 0; val/test not clipped)

Splits: given files (`split.by: files`, one file per split; a file entry may instead carry
`fractions` to be split itself, e.g. a test file split 1:1 into val/test), a seeded random split by
fractions (`split.by: random`), or by a time/order column (`split.by: column`: the oldest
`fractions.train` of the rows train, then val, then test; cut values computed from the column or
given as `split.boundaries`). The random split is streamed: a row goes to a split by a seeded hash
of (seed, file number, row number) compared with the cumulative fractions, so it is exactly
reproducible but the split sizes are the fractions only up to sampling noise (+-0.2% at 100k rows).

Everything is written to a temporary sibling directory that is renamed into place when complete:
an interrupted or failed prepare leaves nothing that `train` would pick up.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import gzip
import io
import logging
import math
import os
import shutil
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from mtlrec.data.spec import SPEC_FILE, DatasetSpec, FeatureSpec, FunnelSpec, TaskSpec
from mtlrec.errors import MtlrecError

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
TRANSFORMS = ("none", "standardize", "log1p_standardize", "minmax")
VOCAB_FILE = "vocab.parquet"
OOV_ID = 0


# -- the plan: what to read and how to encode it --------------------------------------------------


@dataclass(frozen=True)
class RawSource:
    """One raw file. Its rows go to `split`, or are divided among `fractions` (split -> share)."""

    path: Path
    split: str | None = None
    fractions: dict[str, float] | None = None


@dataclass(frozen=True)
class ReadOptions:
    """How raw files are parsed. format: csv | tsv | parquet | auto (from the file name)."""

    format: str = "auto"
    delimiter: str | None = None
    header: bool = True
    column_names: tuple[str, ...] | None = None
    block_size_mb: float = 1.0


@dataclass
class Plan:
    """Everything `run_plan` needs; built from a dataset config by a preparer."""

    name: str
    path: Path  # the prepared dataset dir
    sources: list[RawSource]
    read: ReadOptions
    sparse: list[str]
    dense: list[str]
    targets: list[TaskSpec]
    funnel: FunnelSpec | None = None
    min_count: int = 1
    transforms: dict[str, str] = field(default_factory=dict)  # dense column -> transform
    fills: dict[str, float] = field(default_factory=dict)  # dense column -> fill value
    split_by: str = "files"  # files | random | column
    split_seed: int = 0
    split_column: str | None = None
    split_fractions: dict[str, float] | None = None
    split_boundaries: tuple[float, float] | None = None
    # Raw columns each source must have; None: the features, labels and split column.
    raw_columns: list[str] | None = None
    # Turns a block of raw string columns into feature + label columns (e.g. derives labels).
    transform: Callable[[pa.Table], pa.Table] | None = None
    # How spec.info names the sources (e.g. the raw release files behind converted ones).
    source_names: list[str] | None = None
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def labels(self) -> list[str]:
        cols: list[str] = []
        for t in self.targets:
            for c in (t.label, t.where):
                if c and c not in cols:
                    cols.append(c)
        if self.funnel is not None:
            for c in (self.funnel.click, self.funnel.conversion):
                if c not in cols:
                    cols.append(c)
        return cols

    @property
    def binary_columns(self) -> set[str]:
        cols = {t.label for t in self.targets if t.type == "binary"}
        cols |= {t.where for t in self.targets if t.where}
        if self.funnel is not None:
            cols |= {self.funnel.click, self.funnel.conversion}
        return cols

    def needed_raw_columns(self) -> list[str]:
        if self.raw_columns is not None:
            return list(self.raw_columns)
        cols = [*self.sparse, *self.dense, *self.labels]
        if self.split_by == "column" and self.split_column not in cols:
            cols.append(self.split_column)
        return cols


# -- config -> plan -------------------------------------------------------------------------------


def _key(cfg: Mapping[str, Any], key: str, default: Any = None) -> Any:
    value = cfg.get(key, default)
    return default if value is None else value


def _str_list(cfg: Mapping[str, Any], key: str) -> list[str]:
    value = cfg.get(key) or []
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)):
        raise MtlrecError(f"dataset.{key} must be a list of column names, got {value!r}")
    return [str(v) for v in value]


def check_fractions(key: str, fractions: Any) -> dict[str, float]:
    if not isinstance(fractions, Mapping) or not fractions:
        raise MtlrecError(
            f"{key} must map split names to shares, e.g. {{train: 0.8, val: 0.1, test: 0.1}}; got {fractions!r}"
        )
    out = {}
    for split, share in fractions.items():
        if split not in SPLITS:
            raise MtlrecError(f"{key}: unknown split '{split}'; use train, val, test")
        if not isinstance(share, (int, float)) or not 0 < share <= 1:
            raise MtlrecError(f"{key}.{split} must be a number in (0, 1], got {share!r}")
        out[str(split)] = float(share)
    if not math.isclose(sum(out.values()), 1.0, abs_tol=1e-6):
        raise MtlrecError(f"{key}: shares must sum to 1, got {sum(out.values()):g} ({out})")
    return out


def raw_file(raw_dir: Path, name: str, key: str) -> Path:
    """A raw file path (relative names are under raw_dir); must exist and not be empty."""
    path = Path(name).expanduser()
    if not path.is_absolute():
        path = raw_dir / path
    if not path.is_file():
        raise MtlrecError(
            f"{path}: raw file ({key}) not found; put it there or set dataset.raw_dir / {key}"
        )
    if path.stat().st_size == 0:
        raise MtlrecError(f"{path}: the raw file ({key}) is empty (0 bytes)")
    return path


def parse_targets(cfg: Mapping[str, Any]) -> list[TaskSpec]:
    targets = cfg.get("targets")
    if not isinstance(targets, Mapping) or not targets:
        raise MtlrecError(
            "dataset.targets must define at least one task, e.g. targets: {ctr: {label: click, type: binary}}"
        )
    out = []
    for name, t in targets.items():
        if isinstance(t, str):
            t = {"label": t}
        if not isinstance(t, Mapping) or "label" not in t:
            raise MtlrecError(f"dataset.targets.{name} needs a label column, e.g. {{label: click}}")
        unknown = sorted(set(t) - {"label", "type", "where", "weight"})
        if unknown:
            raise MtlrecError(
                f"dataset.targets.{name}: unknown key(s) {unknown}; use label, type, where, weight"
            )
        typ = str(t.get("type") or "binary")
        if typ not in ("binary", "regression"):
            raise MtlrecError(
                f"dataset.targets.{name}.type '{typ}' is unknown; use binary|regression"
            )
        out.append(
            TaskSpec(
                name=str(name),
                label=str(t["label"]),
                type=typ,
                where=None if t.get("where") is None else str(t["where"]),
                weight=float(t.get("weight", 1.0)),
            )
        )
    return out


def read_options(cfg: Mapping[str, Any]) -> ReadOptions:
    fmt = str(_key(cfg, "format", "auto"))
    if fmt not in ("auto", "csv", "tsv", "parquet"):
        raise MtlrecError(f"dataset.format '{fmt}' is unknown; use auto, csv, tsv or parquet")
    names = cfg.get("column_names")
    header = bool(_key(cfg, "header", True))
    if not header and not names:
        raise MtlrecError("dataset.header is false: list the columns in dataset.column_names")
    block = float(_key(cfg, "block_size_mb", 1.0))
    if not block > 0:
        raise MtlrecError(f"dataset.block_size_mb must be > 0, got {block}")
    return ReadOptions(
        format=fmt,
        delimiter=cfg.get("delimiter"),
        header=header,
        column_names=tuple(str(n) for n in names) if names else None,
        block_size_mb=block,
    )


def generic_plan(cfg: Mapping[str, Any]) -> Plan:
    """The plan of a `preparer: csv` dataset config (bring-your-own data); see README."""
    name = str(cfg.get("name") or "")
    if not cfg.get("path"):
        raise MtlrecError(
            f"dataset '{name}': dataset.path (where to write the prepared data) is not set"
        )
    raw_dir = Path(str(_key(cfg, "raw_dir", "."))).expanduser()
    split = dict(cfg.get("split") or {})
    unknown = sorted(set(split) - {"by", "fractions", "seed", "column", "boundaries"})
    if unknown:
        raise MtlrecError(
            f"dataset.split: unknown key(s) {unknown}; use by, fractions, seed, column, boundaries"
        )
    by = str(split.get("by") or "files")
    if by not in ("files", "random", "column"):
        raise MtlrecError(f"dataset.split.by '{by}' is unknown; use files, random or column")
    files = cfg.get("files")
    if not files:
        raise MtlrecError(f"dataset '{name}': dataset.files lists no raw files")
    sources: list[RawSource] = []
    if by == "files":
        if not isinstance(files, Mapping):
            raise MtlrecError(
                "dataset.files must map split names to files with split.by=files, e.g. {train: train.csv, val: val.csv, test: test.csv}"
            )
        for key, entry in files.items():
            if isinstance(entry, Mapping):
                path = raw_file(raw_dir, str(entry.get("file")), f"dataset.files.{key}.file")
                fr = check_fractions(f"dataset.files.{key}.fractions", entry.get("fractions"))
                sources.append(RawSource(path, fractions=fr))
            else:
                if key not in SPLITS:
                    raise MtlrecError(
                        f"dataset.files.{key}: '{key}' is not a split; use train, val, test (or give {{file, fractions}})"
                    )
                sources.append(
                    RawSource(raw_file(raw_dir, str(entry), f"dataset.files.{key}"), split=str(key))
                )
    else:
        entries = (
            [files]
            if isinstance(files, str)
            else list(files.values())
            if isinstance(files, Mapping)
            else list(files)
        )
        fractions = check_fractions(
            "dataset.split.fractions",
            split.get("fractions") or {"train": 0.8, "val": 0.1, "test": 0.1},
        )
        for i, entry in enumerate(entries):
            sources.append(
                RawSource(raw_file(raw_dir, str(entry), f"dataset.files[{i}]"), fractions=fractions)
            )
    plan = Plan(
        name=name,
        path=Path(str(cfg["path"])).expanduser(),
        sources=sources,
        read=read_options(cfg),
        sparse=_str_list(cfg, "sparse"),
        dense=_str_list(cfg, "dense"),
        targets=parse_targets(cfg),
        funnel=FunnelSpec(**cfg["funnel"]) if cfg.get("funnel") else None,
        min_count=int(_key(cfg, "min_count", 1)),
        split_by=by,
        split_seed=int(_key(split, "seed", 0)),
        split_column=None if split.get("column") is None else str(split["column"]),
        split_fractions=None if by == "files" else sources[0].fractions,
        split_boundaries=tuple(float(b) for b in split["boundaries"])
        if split.get("boundaries")
        else None,
        info={"preparer": "csv"},
    )
    if by == "column":
        if not plan.split_column:
            raise MtlrecError(
                "dataset.split.by=column needs dataset.split.column (a time/order column)"
            )
        if plan.split_boundaries is not None and len(plan.split_boundaries) != 2:
            raise MtlrecError(
                f"dataset.split.boundaries must be [train_end, val_end], got {list(plan.split_boundaries)}"
            )
    set_dense_options(plan, cfg)
    return plan


def set_dense_options(plan: Plan, cfg: Mapping[str, Any]) -> None:
    """Per-column transform and fill value from dataset.dense_transform(s) / dense_fill(s)."""
    default_t = str(_key(cfg, "dense_transform", "standardize"))
    default_f = _key(cfg, "dense_fill", 0.0)
    per_t = dict(cfg.get("dense_transforms") or {})
    per_f = dict(cfg.get("dense_fills") or {})
    for key, per in (("dense_transforms", per_t), ("dense_fills", per_f)):
        stray = sorted(set(per) - set(plan.dense))
        if stray:
            raise MtlrecError(f"dataset.{key}: {stray} not among the dense columns {plan.dense}")
    for col in plan.dense:
        t = str(per_t.get(col, default_t))
        if t not in TRANSFORMS:
            raise MtlrecError(
                f"dense transform '{t}' of column '{col}' is unknown; use one of {list(TRANSFORMS)}"
            )
        fill = per_f.get(col, default_f)
        if not isinstance(fill, (int, float)) or not math.isfinite(fill):
            raise MtlrecError(
                f"dense fill value of column '{col}' must be a finite number, got {fill!r}"
            )
        plan.transforms[col], plan.fills[col] = t, float(fill)


def check_plan(plan: Plan) -> None:
    """Config-level mistakes, before any file is read."""
    if plan.min_count < 1:
        raise MtlrecError(f"dataset.min_count must be >= 1, got {plan.min_count}")
    if not plan.sparse and not plan.dense:
        raise MtlrecError(
            f"dataset '{plan.name}': no features; list columns in dataset.sparse / dataset.dense"
        )
    features = plan.sparse + plan.dense
    dupes = sorted({c for c in features if features.count(c) > 1})
    if dupes:
        raise MtlrecError(
            f"dataset '{plan.name}': column(s) {dupes} listed twice among sparse/dense features"
        )
    for t in plan.targets:
        for role, col in (("label", t.label), ("where", t.where)):
            if col and col in features:
                kind = "sparse" if col in plan.sparse else "dense"
                raise MtlrecError(
                    f"dataset.{kind} lists '{col}', the {role} column of task '{t.name}'; a label column cannot also be a feature: remove it from dataset.{kind}"
                )
    if plan.split_column and plan.split_column in plan.labels:
        raise MtlrecError(f"dataset.split.column '{plan.split_column}' is a label column")
    covered = set()
    for s in plan.sources:
        covered |= {s.split} if s.split else set(s.fractions or {})
    missing = [s for s in SPLITS if s not in covered]
    if missing:
        raise MtlrecError(
            f"dataset '{plan.name}': no rows go to split(s) {missing}; give a file for each or split one by fractions"
        )


# -- reading --------------------------------------------------------------------------------------


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
    """The column names of a raw file (header line, or dataset.column_names)."""
    fmt = file_format(path, read)
    if fmt == "parquet":
        try:
            return pq.read_schema(path).names
        except (pa.ArrowInvalid, OSError) as e:
            raise MtlrecError(f"{path}: not a readable parquet file ({e})") from None
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        with opener(path, "rt", newline="", encoding="utf-8") as f:
            first = f.readline()
    except (OSError, EOFError, UnicodeDecodeError) as e:
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
    fmt = file_format(path, read)
    have = header_columns(path, read)
    missing = [c for c in columns if c not in have]
    if missing:
        raise MtlrecError(
            f"{path}: column(s) {missing} not found; the file has {len(have)} columns: {have[:12]}{' ...' if len(have) > 12 else ''}"
        )
    first_row = 0
    if fmt == "parquet":
        pf = pq.ParquetFile(path)
        if pf.metadata.num_rows == 0:
            raise MtlrecError(f"{path}: the raw file has no data rows")
        batch_rows = max(1024, int(read.block_size_mb * 2**20 / max(1, 8 * len(columns))))
        for batch in pf.iter_batches(batch_size=batch_rows, columns=columns):
            yield Block(pa.Table.from_batches([batch]), source_index, first_row, 0)
            first_row += batch.num_rows
        return

    bad: list[pacsv.InvalidRow] = []

    def on_invalid(row: pacsv.InvalidRow) -> str:
        bad.append(row)
        return "error"

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
        raise MtlrecError(f"{path}: cannot parse the file ({str(e).splitlines()[0]})") from None
    except (OSError, EOFError) as e:
        raise MtlrecError(f"{path}: cannot read the file ({e})") from None
    if first_row == 0:
        raise MtlrecError(f"{path}: the raw file has no data rows")


def plan_blocks(plan: Plan, source_index: int) -> Iterator[Block]:
    for block in iter_blocks(plan, source_index, plan.needed_raw_columns()):
        if plan.transform is not None:
            block.table = plan.transform(block.table)
        yield block


# -- splits ---------------------------------------------------------------------------------------

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


def split_codes(plan: Plan, block: Block, cuts: tuple[float, float] | None) -> np.ndarray:
    source = plan.sources[block.source_index]
    n = block.table.num_rows
    if source.split is not None:
        return np.full(n, SPLITS.index(source.split), dtype=np.int8)
    if plan.split_by == "column":
        t = numeric(block, source, plan.split_column, "split")
        if np.isnan(t).any():
            i = int(np.flatnonzero(np.isnan(t))[0])
            raise MtlrecError(
                f"{source.path}: {block.where(source, i)}: split column '{plan.split_column}' is empty"
            )
        return np.where(t < cuts[0], 0, np.where(t < cuts[1], 1, 2)).astype(np.int8)
    u = row_uniforms(plan.split_seed, block.source_index, block.first_row, n)
    return _by_fractions(u, source.fractions)


def column_cuts(plan: Plan) -> tuple[float, float]:
    """Cut values of the split column: train < cut0 <= val < cut1 <= test.

    Reads the one column (8 bytes per row) and takes the order statistics at the train and
    train+val shares, so the oldest rows train and the newest test.
    """
    if plan.split_boundaries is not None:
        return plan.split_boundaries
    parts = []
    for i, s in enumerate(plan.sources):
        for block in iter_blocks(plan, i, [plan.split_column]):
            parts.append(numeric(block, s, plan.split_column, "split"))
    t = np.sort(np.concatenate(parts))
    t = t[~np.isnan(t)]
    fr = plan.split_fractions or {}
    n_train = int(round(len(t) * fr.get("train", 0.0)))
    n_val = int(round(len(t) * fr.get("val", 0.0)))
    cut0 = t[min(n_train, len(t) - 1)]
    cut1 = t[min(n_train + n_val, len(t) - 1)] if fr.get("test") else math.inf
    return float(cut0), float(cut1)


# -- fitting (pass 1) -----------------------------------------------------------------------------


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
class DenseStats:
    n: int = 0
    total: float = 0.0
    total_sq: float = 0.0
    lo: float = math.inf
    hi: float = -math.inf
    log_total: float = 0.0
    log_total_sq: float = 0.0

    def add(self, x: np.ndarray, with_log: bool) -> None:
        if len(x) == 0:
            return
        self.n += len(x)
        self.total += float(x.sum())
        self.total_sq += float(np.square(x).sum())
        self.lo, self.hi = min(self.lo, float(x.min())), max(self.hi, float(x.max()))
        if with_log:
            lx = np.log1p(x)
            self.log_total += float(lx.sum())
            self.log_total_sq += float(np.square(lx).sum())

    @staticmethod
    def _mean_std(n: int, s: float, s2: float) -> tuple[float, float]:
        mean = s / n
        std = math.sqrt(max(s2 / n - mean * mean, 0.0))
        return mean, (std if std > 1e-12 else 1.0)

    def params(self, transform: str) -> dict[str, float]:
        if transform == "none" or self.n == 0:
            return {}
        if transform == "standardize":
            mean, std = self._mean_std(self.n, self.total, self.total_sq)
            return {"mean": mean, "std": std}
        if transform == "log1p_standardize":
            mean, std = self._mean_std(self.n, self.log_total, self.log_total_sq)
            return {"mean": mean, "std": std}
        return {"min": self.lo, "max": self.hi}


def sparse_values(table: pa.Table, col: str) -> pa.Array:
    """A sparse column as strings (vocabulary keys); missing values become ''."""
    arr = table.column(col).combine_chunks()
    if not (pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type)):
        arr = pc.cast(arr, pa.string())
    return pc.fill_null(arr, "")


def dense_values(plan: Plan, block: Block, col: str) -> np.ndarray:
    source = plan.sources[block.source_index]
    x = numeric(block, source, col, "dense")
    x = np.where(np.isnan(x), plan.fills[col], x)
    if plan.transforms[col] == "log1p_standardize" and (x <= -1).any():
        i = int(np.flatnonzero(x <= -1)[0])
        raise MtlrecError(
            f"{source.path}: {block.where(source, i)}: dense column '{col}' holds {x[i]:g}; log1p_standardize needs values > -1 (use standardize)"
        )
    if not np.isfinite(x).all():
        i = int(np.flatnonzero(~np.isfinite(x))[0])
        raise MtlrecError(
            f"{source.path}: {block.where(source, i)}: dense column '{col}' holds {x[i]:g}"
        )
    return x


@dataclass
class Fitted:
    vocab: dict[str, pa.Array]  # field -> values with ids 1..V (index + 1)
    counts: dict[str, pa.Array]
    dense: dict[str, dict[str, float]]  # column -> transform parameters
    train_rows: int


def fit(plan: Plan, cuts: tuple[float, float] | None) -> Fitted:
    counters = {c: ValueCounter() for c in plan.sparse}
    stats = {c: DenseStats() for c in plan.dense}
    train_rows = 0
    for i, source in enumerate(plan.sources):
        if source.split is not None and source.split != "train":
            continue
        if source.fractions is not None and "train" not in source.fractions:
            continue
        for block in plan_blocks(plan, i):
            is_train = split_codes(plan, block, cuts) == 0
            if not is_train.any():
                continue
            mask = pa.array(is_train)
            rows = block.table.filter(mask)
            train_rows += rows.num_rows
            for c in plan.sparse:
                counters[c].add(sparse_values(rows, c))
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
    return Fitted(vocab, counts, dense, train_rows)


# -- encoding (pass 2) ----------------------------------------------------------------------------


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


@dataclass
class SplitSummary:
    rows: int = 0
    positives: dict[str, float] = field(default_factory=dict)  # task -> sum of labels in its space
    space: dict[str, int] = field(default_factory=dict)  # task -> rows in its sample space
    oov: dict[str, int] = field(default_factory=dict)  # field -> rows mapped to the oov id


def encode_block(plan: Plan, fitted: Fitted, block: Block) -> pa.Table:
    source = plan.sources[block.source_index]
    table = block.table
    cols: dict[str, pa.Array] = {}
    for c in plan.sparse:
        idx = pc.index_in(sparse_values(table, c), value_set=fitted.vocab[c])
        ids = pc.fill_null(pc.add(idx, 1), OOV_ID)
        cols[c] = ids.cast(pa.int32())
    for c in plan.dense:
        cols[c] = pa.array(
            apply_transform(dense_values(plan, block, c), fitted.dense[c]).astype(np.float32)
        )
    for c in plan.labels:
        y = numeric(block, source, c, "label")
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


def encode(
    plan: Plan, fitted: Fitted, cuts: tuple[float, float] | None, out_dir: Path
) -> dict[str, SplitSummary]:
    writers: dict[str, pq.ParquetWriter] = {}
    summary = {s: SplitSummary() for s in SPLITS}
    try:
        for i in range(len(plan.sources)):
            for block in plan_blocks(plan, i):
                codes = split_codes(plan, block, cuts)
                encoded = encode_block(plan, fitted, block)
                for k, split in enumerate(SPLITS):
                    mask = codes == k
                    if not mask.any():
                        continue
                    part = encoded.filter(pa.array(mask))
                    if split not in writers:
                        writers[split] = pq.ParquetWriter(out_dir / f"{split}.parquet", part.schema)
                    writers[split].write_table(part)
                    _summarize(plan, summary[split], part)
    finally:
        for w in writers.values():
            w.close()
    for split, s in summary.items():
        if s.rows == 0:
            raise MtlrecError(
                f"dataset '{plan.name}': the {split} split received no rows; check dataset.files / dataset.split"
            )
    return summary


def _summarize(plan: Plan, s: SplitSummary, part: pa.Table) -> None:
    s.rows += part.num_rows
    for c in plan.sparse:
        s.oov[c] = s.oov.get(c, 0) + int(pc.sum(pc.equal(part.column(c), OOV_ID)).as_py() or 0)
    for t in plan.targets:
        y = part.column(t.label).to_numpy()
        if t.where:
            y = y[part.column(t.where).to_numpy() == 1]
        s.positives[t.name] = s.positives.get(t.name, 0.0) + float(y.sum())
        s.space[t.name] = s.space.get(t.name, 0) + len(y)


# -- publishing -----------------------------------------------------------------------------------


@contextlib.contextmanager
def staged_dir(path: Path, overwrite: bool) -> Iterator[Path]:
    """A temporary sibling of `path` that replaces `path` only when the block completes."""
    path = Path(path).expanduser()
    if path.exists() and not overwrite:
        raise MtlrecError(
            f"{path}: a prepared dataset already exists there; pass overwrite=true to prepare it again"
        )
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise MtlrecError(
            f"{path.parent}: cannot create the data dir ({e.strerror}); set MTLREC_DATA_DIR or data_dir"
        ) from None
    tag = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp = path.parent / f".{path.name}.tmp-{tag}"
    tmp.mkdir()
    try:
        yield tmp
        if path.exists():
            old = path.parent / f".{path.name}.old-{tag}"
            os.rename(path, old)
            os.rename(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


@dataclass
class Result:
    path: Path
    spec: DatasetSpec
    summary: dict[str, SplitSummary]
    vocab_sizes: dict[str, int]


def run_plan(plan: Plan, out_dir: Path) -> Result:
    """Fit on train, encode every split into out_dir, write vocab.parquet and spec.json last."""
    check_plan(plan)
    cuts = column_cuts(plan) if plan.split_by == "column" else None
    fitted = fit(plan, cuts)
    summary = encode(plan, fitted, cuts, out_dir)
    vocab_rows = {"field": [], "value": [], "id": [], "train_count": []}
    for c in plan.sparse:
        n = len(fitted.vocab[c])
        vocab_rows["field"] += [c] * n
        vocab_rows["value"] += fitted.vocab[c].to_pylist()
        vocab_rows["id"] += list(range(1, n + 1))
        vocab_rows["train_count"] += fitted.counts[c].to_pylist()
    pq.write_table(
        pa.table(
            vocab_rows,
            schema=pa.schema(
                [
                    ("field", pa.string()),
                    ("value", pa.string()),
                    ("id", pa.int32()),
                    ("train_count", pa.int64()),
                ]
            ),
        ),
        out_dir / VOCAB_FILE,
    )
    features = [
        FeatureSpec(c, "sparse", len(fitted.vocab[c]) + 1, oov_id=OOV_ID) for c in plan.sparse
    ]
    features += [FeatureSpec(c, "dense") for c in plan.dense]
    info = {
        **plan.info,
        "sources": [
            {"file": name, **({"split": s.split} if s.split else {"fractions": s.fractions})}
            for s, name in zip(
                plan.sources, plan.source_names or [str(s.path) for s in plan.sources], strict=True
            )
        ],
        "split": {"by": plan.split_by, "seed": plan.split_seed}
        | ({"column": plan.split_column, "cuts": list(cuts)} if cuts else {}),
        "rows": {s: summary[s].rows for s in SPLITS},
        "min_count": plan.min_count,
        "oov_id": OOV_ID,
        "vocab_file": VOCAB_FILE,
        "dense": fitted.dense,
    }
    spec = DatasetSpec(
        name=plan.name,
        features=tuple(features),
        labels=tuple(plan.labels),
        tasks=tuple(plan.targets),
        funnel=plan.funnel,
        splits={s: f"{s}.parquet" for s in SPLITS},
        info=info,
    )
    spec.validate(str(out_dir / SPEC_FILE))
    spec.save(out_dir)
    return Result(plan.path, spec, summary, {c: len(fitted.vocab[c]) + 1 for c in plan.sparse})


# -- the command ----------------------------------------------------------------------------------

# preparer name (dataset.preparer) -> "module:function" taking (dataset cfg, staging dir) -> Result
PREPARERS: dict[str, str] = {
    "csv": "mtlrec.data.prepare:prepare_generic",
    "census": "mtlrec.data.census:prepare",
    "aliccp": "mtlrec.data.aliccp:prepare",
    "aliexpress": "mtlrec.data.aliexpress:prepare",
    "mmoe_synthetic": "mtlrec.data.mmoe_synthetic:prepare",
}


def prepare_generic(cfg: Mapping[str, Any], out_dir: Path) -> Result:
    return run_plan(generic_plan(cfg), out_dir)


def prepare_dataset(cfg: Mapping[str, Any], overwrite: bool = False) -> Result:
    """Prepare the dataset a (resolved) dataset config describes, atomically, at cfg['path']."""
    import importlib

    name = cfg.get("name")
    preparer = cfg.get("preparer")
    if preparer is None and name in PREPARERS:
        preparer = name
    if preparer not in PREPARERS:
        raise MtlrecError(
            f"dataset '{name}': dataset.preparer is '{preparer}'; use one of {sorted(PREPARERS)} (csv for your own files)"
        )
    if not cfg.get("path"):
        raise MtlrecError(
            f"dataset '{name}': dataset.path (where to write the prepared data) is not set"
        )
    module, func = PREPARERS[str(preparer)].split(":")
    build = getattr(importlib.import_module(module), func)
    path = Path(str(cfg["path"])).expanduser()
    with staged_dir(path, overwrite) as tmp:
        result = build(cfg, tmp)
    return replace(result, path=path)


def compose_prepare(overrides: Sequence[str], config_dir: str | None = None) -> dict[str, Any]:
    """The resolved `prepare` config (conf/prepare.yaml + the user's overrides), as a dict."""
    from hydra import compose, initialize_config_module
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    overrides = list(overrides)
    if config_dir is not None:
        cdir = Path(config_dir).expanduser().resolve()
        if not cdir.is_dir():
            raise MtlrecError(f"{config_dir}: --config-dir is not a directory")
        overrides.append(f"hydra.searchpath=['file://{cdir}']")
    try:
        with initialize_config_module(config_module="mtlrec.conf", version_base="1.3"):
            cfg = compose(config_name="prepare", overrides=overrides)
        return OmegaConf.to_container(cfg, resolve=True)
    except (HydraException, OmegaConfBaseException) as e:
        msg = " ".join(line.strip() for line in str(e).splitlines() if line.strip())
        raise MtlrecError(f"config: {msg}") from None


def print_summary(result: Result, console=None, config_dir: str | None = None) -> None:
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    spec = result.spec
    splits = Table(title=f"{spec.name}: rows and label rates per split")
    splits.add_column("split")
    splits.add_column("rows", justify="right")
    for t in spec.tasks:
        where = f" | {t.where}=1" if t.where else ""
        splits.add_column(f"{t.name} ({t.label}{where})", justify="right")
    for name in SPLITS:
        s = result.summary[name]
        row = [name, f"{s.rows:,}"]
        for t in spec.tasks:
            space = s.space.get(t.name, 0)
            value = s.positives.get(t.name, 0.0) / space if space else math.nan
            row.append(f"{'pos ' if t.type == 'binary' else 'mean '}{value:.4f}")
        splits.add_row(*row)
    console.print(splits)
    if result.vocab_sizes:
        fields = Table(title="sparse fields (id 0 = out of vocabulary)")
        fields.add_column("field")
        fields.add_column("vocab", justify="right")
        for name in SPLITS:
            fields.add_column(f"oov {name}", justify="right")
        for c, size in result.vocab_sizes.items():
            fields.add_row(
                c,
                f"{size:,}",
                *(
                    f"{result.summary[s].oov.get(c, 0) / max(1, result.summary[s].rows):.2%}"
                    for s in SPLITS
                ),
            )
        console.print(fields)
    dense = [f.name for f in spec.dense]
    if dense:
        shown = ", ".join(dense[:8]) + (f", ... ({len(dense)} in all)" if len(dense) > 8 else "")
        console.print(f"dense: {shown}")
    # Plain prints: paths and commands must not be wrapped to the terminal width.
    print(f"prepared {spec.name} at {result.path}")
    extra = f"--config-dir {config_dir} " if config_dir else ""
    print(f"train with: mtlrec train {extra}dataset={spec.name}")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="mtlrec prepare",
        description="Turn a dataset's raw files into parquet splits + spec.json under the data dir.",
        epilog="e.g. mtlrec prepare dataset=census dataset.raw_dir=../shared/data/census-income-kdd",
    )
    parser.add_argument(
        "--config-dir", help="a directory of your own configs (holding dataset/NAME.yaml)"
    )
    parser.add_argument("--cfg", action="store_true", help="print the composed config and exit")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides: dataset=NAME key=value ...")
    args = parser.parse_args(argv)
    if not any(o.split("=", 1)[0].lstrip("+") == "dataset" for o in args.overrides):
        raise MtlrecError(
            f"say which dataset to prepare, e.g. `mtlrec prepare dataset=census`; built in: {', '.join(sorted(PREPARERS.keys() - {'csv'}))}"
        )
    cfg = compose_prepare(args.overrides, args.config_dir)
    if args.cfg:
        import yaml

        print(yaml.safe_dump(cfg, sort_keys=False), end="")
        return 0
    result = prepare_dataset(cfg["dataset"], overwrite=bool(cfg.get("overwrite")))
    print_summary(result, config_dir=args.config_dir)
    return 0
