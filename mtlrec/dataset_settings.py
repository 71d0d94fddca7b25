"""The `dataset` group of a run, typed once at the edge (`mtlrec.settings.check`).

    DatasetSettings.from_mapping(cfg.dataset, source=typed_source_config)

`path` and `raw_dir` are `Path`s with `~` expanded (or None), so nothing downstream turns a config
string into a path again. `raw` keeps the composed node (plain containers) for the keys only a
dataset source reads; `source` is the source's own typed Config (mtlrec.data.sources), when the
settings check built it. Imports nothing of mtlrec, so every layer (data/ too) may take it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

GENERATED = "synthetic_ccp"  # the source that generates its rows on first use


def config_path(value: Any) -> Path | None:
    """A path-valued config key as a Path with `~` expanded; None for null or ''."""
    if value is None or value == "":
        return None
    return Path(str(value)).expanduser()


@dataclass(frozen=True)
class DatasetSettings:
    """What a run reads of its `dataset` config group."""

    name: str = ""
    path: Path | None = None  # the prepared dataset dir (what `mtlrec train` reads)
    raw_dir: Path | None = None  # the raw files `mtlrec prepare` reads (raw-file sources)
    tasks: tuple[str, ...] | None = None  # task names to train on (None: all of the dataset's)
    preparer: str | None = None
    sample_weight: str | None = None
    raw: Mapping[str, Any] = field(default_factory=dict)  # the whole group, plain containers
    source: Any = None  # the source's typed Config (mtlrec.data.sources.*Config), when checked

    @classmethod
    def from_mapping(cls, cfg: Mapping[str, Any] | None, source: Any = None) -> DatasetSettings:
        raw = dict(cfg or {})
        tasks = raw.get("tasks")
        return cls(
            name=str(raw.get("name") or ""),
            path=config_path(raw.get("path")),
            raw_dir=config_path(raw.get("raw_dir")),
            tasks=None if tasks is None else tuple(str(t) for t in tasks),
            preparer=None if raw.get("preparer") is None else str(raw["preparer"]),
            sample_weight=None if raw.get("sample_weight") is None else str(raw["sample_weight"]),
            raw=raw,
            source=source,
        )

    @property
    def generated(self) -> bool:
        """The embedded generator builds it (the default dataset or one of its presets)."""
        return GENERATED in (self.name, self.preparer)

    @property
    def task_selection(self) -> list[str] | None:
        """`dataset.tasks` as DatasetSpec.select_tasks takes it."""
        return None if self.tasks is None else list(self.tasks)


def saved_dataset(config: Mapping[str, Any] | None) -> DatasetSettings:
    """The `dataset` group of a run's saved config (a checkpoint's `config`), typed."""
    return DatasetSettings.from_mapping((config or {}).get("dataset"))
