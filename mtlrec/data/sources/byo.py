"""Bring-your-own raw files (`preparer: csv`): CSV/TSV/parquet described by the dataset yaml (README)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mtlrec.data.sources import register
from mtlrec.data.sources.base import DatasetSource, ReadConfig


@dataclass
class CsvConfig(ReadConfig):
    files: Any = None  # {split: file | {file, fractions}}, or a list of files split by fractions
    sparse: list[str] | str = field(default_factory=list)
    dense: list[str] | str = field(default_factory=list)
    targets: dict[str, Any] | None = None  # task -> {label, type, where, weight} (or a label)
    funnel: dict[str, str | None] | None = None  # {click, conversion, conversion_if_clicked}
    split: dict[str, Any] | None = None  # by: files | random | column, fractions, seed, ...


@register
class Csv(DatasetSource):
    name = "csv"
    Config = CsvConfig
    preparable = True

    def prepare(self, cfg, out_dir):
        from mtlrec.data.prepare import generic_plan, run_plan

        return run_plan(generic_plan(cfg), out_dir)
