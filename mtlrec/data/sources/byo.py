"""Bring-your-own raw files (`preparer: csv`): CSV/TSV/parquet described by the dataset yaml (README)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mtlrec.data.sources import register
from mtlrec.data.sources.base import DatasetSource, ReadConfig


@dataclass
class CsvConfig(ReadConfig):
    files: Any = None  # {split: file | {file, fractions}}, or a list of files split by fractions
    # Column names, {pattern: REGEX} or {glob: GLOB} entries (checked by prepare).
    sparse: Any = field(default_factory=list)
    dense: Any = field(default_factory=list)
    bags: dict[str, Any] | None = None  # column -> {sep, max_len, weighted, pooling, ...}
    sequences: dict[str, Any] | None = None  # column -> {max_len, shares_vocab_with, ...}
    hash_buckets: dict[str, int] | None = None  # sparse column -> buckets (no vocabulary)
    feature_groups: dict[str, list[str]] | None = None  # group -> fields summed into one vector
    # task -> {label, type, where, weight, positive, negative} (or a label)
    targets: dict[str, Any] | None = None
    funnel: dict[str, str | None] | None = (
        None  # {click, conversion, conversion_if_clicked, action}
    )
    split: dict[str, Any] | None = None  # by: files | random | column, fractions, seed, ...


@register
class Csv(DatasetSource):
    name = "csv"
    Config = CsvConfig
    preparable = True
    keeps_sample_weight = True

    def prepare(self, cfg, out_dir):
        from mtlrec.data.prepare import generic_plan, run_plan

        return run_plan(generic_plan(cfg), out_dir)
