"""The registry of dataset sources: one module per kind of dataset, found by scanning this package.

    SOURCES["census"]                  -> the class that prepares UCI Census-Income
    source_for(dataset_mapping)        -> the source a dataset config uses
    validate_dataset_config(mapping)   -> its typed Config, or ONE line per wrong key/type
    resolve_dataset_dir(mapping)       -> the prepared dir `mtlrec train` reads (generated first
                                          by a generated source)
    prepare_dataset(mapping)           -> what `mtlrec prepare` runs: the source builds the
                                          dataset in a staged dir, published atomically at `path`

Adding a dataset is its module here (a `DatasetSource` subclass decorated with `@register`: its
Config, its plan and its prepare, all in that one file) and its conf/dataset/NAME.yaml; nothing
else names it. Which source a config uses: `preparer` when set, else the source named like the
dataset, else `prepared` (a directory already in prepared form).

This package is the top of mtlrec.data: the shared machinery below it (spec, encoders, loader,
streaming, generated, funnel, vocabulary, prepare/) never imports a source (tests/test_code_shape.py).
The registry imports every source to know its Config, so a source imports pyarrow, pandas and the
prepare pipeline where it uses them, not at module level (tests/data/test_sources.py).

Generated sources (synthetic_ccp, mmoe_synthetic) make the dataset on first use; the others
(census, aliccp, aliexpress, movielens, bring-your-own `preparer: csv`, `prepared`) must have been
prepared: training on one that is not stops with one line naming the `mtlrec prepare` command (it
never prepares implicitly).
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from mtlrec.config_schema import build
from mtlrec.data.sources.base import DatasetConfig, DatasetSource
from mtlrec.errors import MtlrecError

if TYPE_CHECKING:
    from mtlrec.data.prepare.pipeline import Result

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


def resolve_dataset_dir(cfg: Mapping[str, Any]) -> Path:
    """The directory of the configured dataset, ready to load (spec.json + split parquet files)."""
    return source_for(cfg).resolve(validate_dataset_config(cfg))


def preparable_sources() -> list[str]:
    """The names `dataset.preparer` may take (sources `mtlrec prepare` can build)."""
    return sorted(name for name, cls in SOURCES.items() if cls.preparable)


def prepare_dataset(cfg: Mapping[str, Any], overwrite: bool = False) -> Result:
    """Prepare the dataset a (resolved) dataset config describes, atomically, at cfg['path']."""
    from mtlrec.data.prepare.extend import vocab_from
    from mtlrec.data.prepare.publish import staged_dir
    from mtlrec.data.prepare.replace import raw_inputs

    name = cfg.get("name")
    source = source_for(cfg)
    if not source.preparable and source.generated:
        raise MtlrecError(
            f"dataset '{name}' is generated on first use: `mtlrec train dataset={name}` makes it; there is nothing to prepare"
        )
    if not source.preparable:
        raise MtlrecError(
            f"dataset '{name}': dataset.preparer is '{cfg.get('preparer')}'; use one of {preparable_sources()} (csv for your own files)"
        )
    if not cfg.get("path"):
        raise MtlrecError(
            f"dataset '{name}': dataset.path (where to write the prepared data) is not set"
        )
    config = validate_dataset_config(cfg)
    if config.sample_weight and not source.keeps_sample_weight:
        raise MtlrecError(
            f"dataset.sample_weight={config.sample_weight!r}: the '{source.name}' preparer does not keep a weight column; prepare files that hold one with preparer: csv (docs/datasets.md)"
        )
    path = config.path
    assert path is not None  # checked above
    # dataset.vocab_from: run_plan keeps the old ids; the raw inputs: never replaced by the output
    base = vocab_from(getattr(config, "vocab_from", None))
    inputs = raw_inputs(getattr(config, "raw_dir", None), getattr(config, "files", None))
    with base, staged_dir(path, overwrite, inputs=inputs) as tmp:
        result = source.prepare(config, tmp)
    return replace(result, path=path)


_discover()

__all__ = [
    "SOURCES",
    "DatasetConfig",
    "DatasetSource",
    "preparable_sources",
    "prepare_dataset",
    "register",
    "resolve_dataset_dir",
    "source_for",
    "validate_dataset_config",
]
