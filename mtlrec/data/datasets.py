"""Dataset config -> prepared dataset directory, through the registry of sources (mtlrec.data.sources).

Generated sources (synthetic_ccp, mmoe_synthetic) make the dataset on first use; the others
(census, aliccp, aliexpress, bring-your-own `preparer: csv`, `prepared`) must have been prepared:
training on one that is not stops with one line naming the `mtlrec prepare` command (it never
prepares implicitly).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mtlrec.data.sources import SOURCES, source_for, validate_dataset_config

__all__ = ["SOURCES", "resolve_dataset_dir", "validate_dataset_config"]


def resolve_dataset_dir(cfg: Mapping[str, Any]) -> Path:
    """The directory of the configured dataset, ready to load (spec.json + split parquet files)."""
    cfg = dict(cfg)
    validate_dataset_config(cfg)
    return source_for(cfg).resolve(cfg)
