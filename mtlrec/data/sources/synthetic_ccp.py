"""The embedded impression -> click -> conversion data, generated on first use (mtlrec.data.synthetic_ccp)."""

from __future__ import annotations

from dataclasses import dataclass

from mtlrec.config_schema import build
from mtlrec.data.sources import register
from mtlrec.data.sources.base import DatasetConfig, DatasetSource
from mtlrec.errors import MtlrecError


@dataclass
class SyntheticCcpConfig(DatasetConfig):
    num_rows: int = 200_000  # impressions generated (split 70/15/15)
    generator_seed: int = 0  # seed of the generator: same value, same data

    def validate(self) -> None:
        super().validate()
        if self.num_rows < 100:
            raise MtlrecError(f"dataset.num_rows must be >= 100, got {self.num_rows}")


@register
class SyntheticCcp(DatasetSource):
    name = "synthetic_ccp"
    Config = SyntheticCcpConfig
    generated = True

    def generate(self, cfg):
        from mtlrec.data import synthetic_ccp

        c = build(SyntheticCcpConfig, cfg, "dataset")
        return synthetic_ccp.ensure_prepared(c.path, c.num_rows, c.generator_seed)
