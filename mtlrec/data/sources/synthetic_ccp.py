"""The embedded impression -> click -> conversion data, generated on first use (mtlrec.data.synthetic_ccp)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from mtlrec.config_schema import build
from mtlrec.data.sources import register
from mtlrec.data.sources.base import DatasetConfig, DatasetSource
from mtlrec.errors import MtlrecError

if TYPE_CHECKING:
    from mtlrec.data.synthetic_ccp import Setting


@dataclass
class SyntheticCcpConfig(DatasetConfig):
    num_rows: int = 200_000  # impressions generated (split 70/15/15)
    generator_seed: int = 0  # seed of the generator: same value, same data
    cvr_rate: float = 0.10  # conversion rate among clicks the generator calibrates to
    effect_correlation: float | None = None  # null = the documented per-field correlations
    action_rate: float | None = None  # mean p(D-action | click); null = no cart/wish stage

    def validate(self) -> None:
        super().validate()
        if self.num_rows < 100:
            raise MtlrecError(f"dataset.num_rows must be >= 100, got {self.num_rows}")
        if not 0 < self.cvr_rate < 1:
            raise MtlrecError(f"dataset.cvr_rate must be in (0, 1), got {self.cvr_rate}")
        if self.effect_correlation is not None and not -1 <= self.effect_correlation <= 1:
            raise MtlrecError(
                f"dataset.effect_correlation must be in [-1, 1] or null, got {self.effect_correlation}"
            )
        if self.action_rate is not None and not 0 < self.action_rate < 1:
            raise MtlrecError(
                f"dataset.action_rate must be in (0, 1) or null (no cart/wish stage), got {self.action_rate}"
            )

    def setting(self) -> Setting:
        from mtlrec.data.synthetic_ccp import Setting

        return Setting(self.cvr_rate, self.effect_correlation, self.action_rate)


@register
class SyntheticCcp(DatasetSource):
    name = "synthetic_ccp"
    Config = SyntheticCcpConfig
    generated = True

    def generate(self, cfg):
        from mtlrec.data import synthetic_ccp

        c = build(SyntheticCcpConfig, cfg, "dataset")
        setting = c.setting()
        # options off their defaults get their own cache dir (the default dir stays the same)
        path = f"{c.path}{setting.suffix()}"
        return synthetic_ccp.ensure_prepared(path, c.num_rows, c.generator_seed, setting)
