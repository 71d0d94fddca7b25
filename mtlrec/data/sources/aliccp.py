"""Ali-CCP, the ESMM paper's data: processed CSVs or the raw Tianchi release (mtlrec.data.aliccp)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from mtlrec.data.sources import register
from mtlrec.data.sources.base import DatasetSource, RawFilesConfig
from mtlrec.errors import MtlrecError


@dataclass
class AliccpConfig(RawFilesConfig):
    source: Literal["processed", "raw"] = "processed"
    files: dict[str, str] | None = None  # processed: split -> CSV
    raw_files: dict[str, str] | None = None  # raw: train/test skeleton + common features
    test_val_fraction: float = 0.5
    split_seed: int = 0
    dense_transform: str = "none"  # checked per column by prepare (one line naming the column)
    bags: list[str] | None = None  # source=raw: multi-valued fields kept whole, as weighted bags
    bag_max_len: int = 50

    def validate(self) -> None:
        super().validate()
        if self.bag_max_len < 1:
            raise MtlrecError(f"dataset.bag_max_len must be >= 1, got {self.bag_max_len}")
        if not 0 < self.test_val_fraction < 1:
            raise MtlrecError(
                f"dataset.test_val_fraction must be in (0, 1), got {self.test_val_fraction}"
            )


@register
class Aliccp(DatasetSource):
    name = "aliccp"
    Config = AliccpConfig
    preparable = True

    def prepare(self, cfg, out_dir):
        from mtlrec.data import aliccp

        return aliccp.prepare(cfg, out_dir)
