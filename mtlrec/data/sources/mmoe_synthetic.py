"""The MMoE paper's synthetic regression data (Sec. 3.2), generated on first use (mtlrec.data.mmoe_synthetic)."""

from __future__ import annotations

from dataclasses import dataclass

from mtlrec.data.sources import register
from mtlrec.data.sources.base import DatasetConfig, DatasetSource


@dataclass
class MmoeSyntheticConfig(DatasetConfig):
    correlation: float = 0.5  # cos(w1, w2), in [-1, 1]
    input_dim: int = 100
    num_rows: int = 10_000
    generator_seed: int = 0

    def validate(self) -> None:
        from mtlrec.data.mmoe_synthetic import check_params

        super().validate()
        check_params(self.num_rows, self.input_dim, self.correlation)


@register
class MmoeSynthetic(DatasetSource):
    name = "mmoe_synthetic"
    Config = MmoeSyntheticConfig
    generated = True
    preparable = True

    def generate(self, cfg):
        from mtlrec.data import mmoe_synthetic

        return mmoe_synthetic.ensure_prepared(cfg)

    def prepare(self, cfg, out_dir):
        from mtlrec.data import mmoe_synthetic

        return mmoe_synthetic.prepare(cfg, out_dir)
