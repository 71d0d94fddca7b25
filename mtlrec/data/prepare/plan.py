"""The plan of a prepare: what to read, how to split it and how to encode it (no I/O here)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
    # Rows whose funnel is inconsistent (see funnel_pairs): "error" (one line) or "drop" (counted).
    funnel_violations: str = "error"
    multi: list[MultiField] = field(default_factory=list)  # bag and sequence columns
    hash_buckets: dict[str, int] = field(default_factory=dict)  # hashed single-id field -> N
    label_maps: dict[str, LabelMap] = field(default_factory=dict)  # string label column -> map
    feature_groups: dict[str, list[str]] = field(default_factory=dict)
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
        cols = [*self.sparse, *self.multi_names, *self.dense, *self.labels]
        if self.split_by == "column" and self.split_column and self.split_column not in cols:
            cols.append(self.split_column)
        return cols
