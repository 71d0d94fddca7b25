"""AliExpress search logs of one country (Tianchi 74690), prepared by mtlrec.data.aliexpress."""

from __future__ import annotations

from dataclasses import dataclass

from mtlrec.data.sources import register
from mtlrec.data.sources.base import DatasetSource, ReadConfig


@dataclass
class AliexpressConfig(ReadConfig):
    files: dict[str, str] | None = None  # train, test (and optionally val)
    val_fraction: float = 0.1  # with no val file: this share of the train file becomes val
    split_seed: int = 0
    dense_transform: str = "none"  # checked per column by prepare (one line naming the column)


@register
class Aliexpress(DatasetSource):
    name = "aliexpress"
    Config = AliexpressConfig
    preparable = True

    def prepare(self, cfg, out_dir):
        from mtlrec.data import aliexpress

        return aliexpress.prepare(cfg, out_dir)
