"""The plan of a prepare: what to read, how to split it and how to encode it (no I/O here)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import pyarrow as pa

from mtlrec.data.funnel import POLICIES, funnel_pairs
from mtlrec.data.spec import FunnelSpec, TaskSpec

SPLITS = ("train", "val", "test")
TRANSFORMS = ("none", "standardize", "log1p_standardize", "minmax")
NONFINITE_POLICIES = ("error", "clip", "impute")  # dataset.dense_nonfinite
VOCAB_FILE = "vocab.parquet"
OOV_ID = 0
FUNNEL_POLICIES = POLICIES


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


@dataclass(frozen=True)
class MultiField:
    """A raw column holding several values: a bag (unordered) or a sequence (oldest value first).

    In a CSV cell the values are separated by `sep` (a parquet list column needs none); with
    `weighted`, each value is `id<weight_sep>weight` (Ali-CCP's `id:weight`). Prepare keeps the
    first `max_len` values of a bag and the newest `max_len` of a sequence, stored newest first.
    """

    name: str
    kind: str = "bag"  # bag | sequence
    max_len: int = 20
    sep: str = "|"
    weighted: bool = False
    weight_sep: str = ":"
    shares_vocab_with: str | None = None
    pooling: str | None = None
    target: str | None = None
    hash_buckets: int | None = None
    embedding_dim: int | None = None
    # A sequence BUILT from the event log (`from: {user, item, time}`): each row's history is its
    # user's events strictly before the row's time; there is no raw column of this name.
    log_user: str | None = None
    log_item: str | None = None
    log_time: str | None = None

    @property
    def built(self) -> bool:
        return self.log_user is not None


@dataclass(frozen=True)
class UserTimeSplit:
    """`split.by: user_time`: each user's last events (by `time`) test, the ones before val.

    `test` / `val` count events, `test_fraction` / `val_fraction` are shares of each user's events
    (rounded down); exactly one of each pair is set.
    """

    user: str
    time: str
    test: int | None = None
    test_fraction: float | None = None
    val: int | None = None
    val_fraction: float | None = None


class RowColumns(Protocol):
    """Per-row values computed from the whole log before the streaming passes (timeline.py)."""

    def split_codes(self, source_index: int, first_row: int, n: int) -> Any: ...

    def history(
        self, name: str, source_index: int, first_row: int, n: int, to_ids: Any
    ) -> tuple[Any, Any]: ...


@dataclass(frozen=True)
class LabelMap:
    """A string label of a binary task: `positive` values -> 1; with `negative`, those -> 0 and
    anything else is an error; without, anything else -> 0."""

    positive: tuple[str, ...]
    negative: tuple[str, ...] | None = None


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
    # A dense value that is inf, NaN or beyond float32: error (one line) | clip | impute (fill).
    dense_nonfinite: str = "error"
    split_by: str = "files"  # files | random | column | user_time
    split_seed: int = 0
    split_column: str | None = None
    split_fractions: dict[str, float] | None = None
    split_boundaries: tuple[float, float] | None = None
    user_time: UserTimeSplit | None = None  # split_by == "user_time"
    # Raw columns each source must have; None: the features, labels and split column.
    raw_columns: list[str] | None = None
    # Turns a block of raw string columns into feature + label columns (e.g. derives labels).
    transform: Callable[[pa.Table], pa.Table] | None = None
    # How spec.info names the sources (e.g. the raw release files behind converted ones).
    source_names: list[str] | None = None
    info: dict[str, Any] = field(default_factory=dict)
    # Rows whose funnel is inconsistent (see funnel_pairs): "error" (one line) or "drop" (counted).
    funnel_violations: str = "error"
    multi: list[MultiField] = field(default_factory=list)  # bag and sequence columns
    hash_buckets: dict[str, int] = field(default_factory=dict)  # hashed single-id field -> N
    label_maps: dict[str, LabelMap] = field(default_factory=dict)  # string label column -> map
    feature_groups: dict[str, list[str]] = field(default_factory=dict)
    # Built by run_plan from the whole log (user_time split, built sequences); None otherwise.
    timeline: RowColumns | None = None

    @property
    def built(self) -> list[MultiField]:
        """The sequences built from the event log (no raw column of their own)."""
        return [m for m in self.multi if m.built]

    def log_columns(self) -> list[str]:
        """The raw columns the timeline reads: user, time (and item) of the split and sequences."""
        cols: list[str] = []
        if self.user_time is not None:
            cols += [self.user_time.user, self.user_time.time]
        for m in self.built:
            cols += [str(m.log_user), str(m.log_time), str(m.log_item)]
        return list(dict.fromkeys(cols))

    # dataset.sample_weight: a column of non-negative row weights, kept with the labels
    sample_weight: str | None = None

    @property
    def weight_columns(self) -> list[str]:
        """The dataset's sample weight column, then the targets' own (targets.T.sample_weight)."""
        cols = [self.sample_weight] + [t.sample_weight for t in self.targets]
        return list(dict.fromkeys(c for c in cols if c))

    @property
    def multi_names(self) -> list[str]:
        return [m.name for m in self.multi]

    def buckets(self, name: str) -> int | None:
        """The hash buckets of an encoded field (a sequence uses its shared field's)."""
        m = next((m for m in self.multi if m.name == name), None)
        if m is not None:
            return self.buckets(m.shares_vocab_with) if m.shares_vocab_with else m.hash_buckets
        return self.hash_buckets.get(name)

    @property
    def labels(self) -> list[str]:
        cols: list[str] = []
        for t in self.targets:
            for c in (t.label, t.where):
                if c and c not in cols:
                    cols.append(c)
        if self.funnel is not None:
            for c in self.funnel.columns:
                if c not in cols:
                    cols.append(c)
        # Sample weights travel with the labels (loaded, streamed and sharded as they are).
        return cols + [c for c in self.weight_columns if c not in cols]

    @property
    def binary_columns(self) -> set[str]:
        cols = {t.label for t in self.targets if t.type == "binary"}
        cols |= {t.where for t in self.targets if t.where}
        if self.funnel is not None:
            cols |= set(self.funnel.columns)
        return cols

    @property
    def funnel_pairs(self) -> list[tuple[str, str]]:
        return funnel_pairs(self.funnel, self.targets)

    def needed_raw_columns(self) -> list[str]:
        if self.raw_columns is not None:
            return list(self.raw_columns)
        raw_multi = [m.name for m in self.multi if not m.built]
        cols = [*self.sparse, *raw_multi, *self.dense, *self.labels]
        if self.split_by == "column" and self.split_column and self.split_column not in cols:
            cols.append(self.split_column)
        return cols
