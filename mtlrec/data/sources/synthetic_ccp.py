"""The embedded impression -> click -> conversion data, generated on first use (mtlrec.data.synthetic_ccp)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
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
        self.check_own_dir()

    def check_own_dir(self) -> None:
        """Options off their defaults make other data: refuse the default data's cache dir."""
        from mtlrec.data.synthetic_ccp import default_dir_name

        changed = self.setting().changed()
        if (
            changed
            and self.path
            and Path(self.path).name == default_dir_name(self.num_rows, self.generator_seed)
        ):
            key, value = next(iter(changed.items()))
            raise MtlrecError(
                f"dataset.{key}={value:g} generates other data than the default synthetic_ccp, but "
                f"dataset.path is the default data's dir ({self.path}); use "
                "dataset=synthetic_ccp_action or dataset=synthetic_ccp_weak (their own dirs) or "
                "set dataset.path"
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
        return synthetic_ccp.ensure_prepared(c.path, c.num_rows, c.generator_seed, c.setting())
