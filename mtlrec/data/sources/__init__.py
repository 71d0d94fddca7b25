"""The registry of dataset sources: one module per kind of dataset, found by scanning this package.

    SOURCES["census"]                  -> the class that prepares UCI Census-Income
    source_for(dataset_mapping)        -> the source a dataset config uses
    validate_dataset_config(mapping)   -> its typed Config, or ONE line per wrong key/type

Adding a dataset is its module here (a `DatasetSource` subclass decorated with `@register`) and its
conf/dataset/NAME.yaml; nothing else names it. Which source a config uses: `preparer` when set,
else the source named like the dataset, else `prepared` (a directory already in prepared form).
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Mapping
from typing import Any, TypeVar

from mtlrec.config_schema import build
from mtlrec.data.sources.base import DatasetConfig, DatasetSource
from mtlrec.errors import MtlrecError

SOURCES: dict[str, type[DatasetSource]] = {}
S = TypeVar("S", bound=type[DatasetSource])


def register(cls: S) -> S:
    """Class decorator: make a source known by its `name`."""
    SOURCES[cls.name] = cls
    return cls


def _discover() -> None:
    for info in pkgutil.iter_modules(__path__):
        if info.name != "base":
            importlib.import_module(f"{__name__}.{info.name}")


def source_for(cfg: Mapping[str, Any]) -> DatasetSource:
    """The source that builds (or reads) the dataset this config describes."""
    preparer = cfg.get("preparer")
    if preparer is not None:
        if preparer not in SOURCES:
            choices = sorted(k for k in SOURCES if k != "prepared")
            raise MtlrecError(
                f"dataset '{cfg.get('name')}': dataset.preparer is '{preparer}'; use one of {choices} (csv for your own files)"
            )
        return SOURCES[str(preparer)]()
    name = cfg.get("name")
    return SOURCES[str(name) if name in SOURCES else "prepared"]()


def validate_dataset_config(cfg: Mapping[str, Any] | None) -> DatasetConfig:
    """The typed config of a `dataset` mapping; a wrong key or type is one MtlrecError line."""
    cfg = dict(cfg or {})
    if not isinstance(cfg.get("preparer"), (str, type(None))):
        raise MtlrecError(f"dataset.preparer={cfg['preparer']!r}: expected a string or null")
    return build(source_for(cfg).Config, cfg, "dataset")


_discover()

__all__ = [
    "SOURCES",
    "DatasetConfig",
    "DatasetSource",
    "register",
    "source_for",
    "validate_dataset_config",
]
