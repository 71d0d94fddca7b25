"""UCI Census-Income (KDD), the MMoE paper's data: prepared from the raw UCI files (mtlrec.data.census)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mtlrec.data.sources import register
from mtlrec.data.sources.base import DatasetSource, RawFilesConfig
from mtlrec.errors import MtlrecError


@dataclass
class CensusConfig(RawFilesConfig):
    task_group: int = 1  # 1: income + marital; 2: education + marital
    train_file: str = "census-income.data"
    test_file: str = "census-income.test"
    split: dict[str, Any] | None = None  # seed, fractions (test file only)
    dense: list[str] = field(default_factory=list)
    exclude: list[str] = field(default_factory=list)
    education_positive: list[str] = field(default_factory=list)

    def validate(self) -> None:
        super().validate()
        if self.task_group not in (1, 2):
            raise MtlrecError(
                f"dataset.task_group must be 1 (income + marital) or 2 (education + marital), got {self.task_group!r}"
            )


@register
class Census(DatasetSource):
    name = "census"
    Config = CensusConfig
    preparable = True
    keeps_sample_weight = True  # instance_weight

    def prepare(self, cfg, out_dir):
        from mtlrec.data import census

        return census.prepare(cfg, out_dir)
