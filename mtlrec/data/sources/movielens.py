"""MovieLens 100K: rating + like tasks, genres bag, history sequence (mtlrec.data.movielens)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from mtlrec.data.sources import register
from mtlrec.data.sources.base import DatasetSource, RawFilesConfig
from mtlrec.errors import MtlrecError


@dataclass
class MovielensConfig(RawFilesConfig):
    ratings_file: str = "u.data"
    users_file: str = "u.user"
    items_file: str = "u.item"
    history_len: int = 50  # items of the user's history kept (the newest)
    history_pooling: Literal["sum", "mean", "max", "target_attention"] = "target_attention"
    like_threshold: float = 4.0  # like = rating >= this
    split: dict[str, Any] | None = None  # fractions of the time split
    feature_groups: dict[str, list[str]] | None = None

    def validate(self) -> None:
        super().validate()
        if self.history_len < 1:
            raise MtlrecError(f"dataset.history_len must be >= 1, got {self.history_len}")


@register
class Movielens(DatasetSource):
    name = "movielens"
    Config = MovielensConfig
    preparable = True

    def prepare(self, cfg, out_dir):
        from mtlrec.data import movielens

        return movielens.prepare(cfg, out_dir)
