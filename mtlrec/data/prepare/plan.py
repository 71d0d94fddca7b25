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
    # Rows whose funnel is inconsistent (see funnel_pairs): "error" (one line) or "drop" (counted).
    funnel_violations: str = "error"

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

    @property
    def funnel_pairs(self) -> list[tuple[str, str]]:
        return funnel_pairs(self.funnel, self.targets)

    def needed_raw_columns(self) -> list[str]:
        if self.raw_columns is not None:
            return list(self.raw_columns)
        cols = [*self.sparse, *self.dense, *self.labels]
        if self.split_by == "column" and self.split_column and self.split_column not in cols:
            cols.append(self.split_column)
        return cols
