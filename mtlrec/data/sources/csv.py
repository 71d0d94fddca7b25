"""`preparer: csv`: your own CSV/TSV/parquet files, described by the dataset yaml alone (README,
"Your own data"; every key in docs/datasets.md).

    mtlrec prepare --config-dir my_conf dataset=my_data

The yaml names the files and how they split (`split.by`: files | random | column | user_time),
the sparse and dense columns (names, or {pattern: REGEX} / {glob: GLOB} entries expanded against
the first file's header), bags, sequences, hashed fields, feature groups, the targets and the
funnel; this module turns it into the prepare pipeline's Plan (mtlrec.data.prepare).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mtlrec.data.sources import register
from mtlrec.data.sources.base import DatasetSource, ReadConfig
from mtlrec.data.spec import FunnelSpec, TaskSpec
from mtlrec.errors import MtlrecError

# The prepare pipeline is imported where it is used: the registry imports every source to know
# its Config, and a run that only reads a prepared dataset does not need it.
if TYPE_CHECKING:
    from mtlrec.data.prepare.plan import Plan, RawSource


@dataclass
class CsvConfig(ReadConfig):
    files: Any = None  # {split: file | {file, fractions}}, or a list of files split by fractions
    # Column names, {pattern: REGEX} or {glob: GLOB} entries (checked by prepare).
    sparse: Any = field(default_factory=list)
    dense: Any = field(default_factory=list)
    bags: dict[str, Any] | None = None  # column -> {sep, max_len, weighted, pooling, ...}
    sequences: dict[str, Any] | None = None  # column -> {max_len, shares_vocab_with, ...}
    hash_buckets: dict[str, int] | None = None  # sparse column -> buckets (no vocabulary)
    feature_groups: dict[str, list[str]] | None = None  # group -> fields summed into one vector
    # task -> {label, type, where, weight, positive, negative} (or a label)
    targets: dict[str, Any] | None = None
    funnel: dict[str, str | None] | None = (
        None  # {click, conversion, conversion_if_clicked, action}
    )
    split: dict[str, Any] | None = None  # by: files | random | column, fractions, seed, ...


def _str_list(cfg: Mapping[str, Any], key: str) -> list[str]:
    value = cfg.get(key) or []
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)):
        raise MtlrecError(f"dataset.{key} must be a list of column names, got {value!r}")
    return [str(v) for v in value]


def parse_targets(cfg: Mapping[str, Any]) -> list[TaskSpec]:
    targets = cfg.get("targets")
    if not isinstance(targets, Mapping) or not targets:
        raise MtlrecError(
            "dataset.targets must define at least one task, e.g. targets: {ctr: {label: click, type: binary}}"
        )
    out = []
    for name, t in targets.items():
        if isinstance(t, str):
            t = {"label": t}
        if not isinstance(t, Mapping) or "label" not in t:
            raise MtlrecError(f"dataset.targets.{name} needs a label column, e.g. {{label: click}}")
        keys = {"label", "type", "where", "weight", "sample_weight", "positive", "negative"}
        unknown = sorted(set(t) - keys)
        if unknown:
            raise MtlrecError(
                f"dataset.targets.{name}: unknown key(s) {unknown}; use label, type, where, weight, sample_weight, positive, negative"
            )
        weight = t.get("weight", 1.0)
        if isinstance(weight, str):
            raise MtlrecError(
                f"dataset.targets.{name}.weight={weight!r}: `weight` is the task's loss weight (a number); to weigh rows by a column use targets.{name}.sample_weight: {weight}"
            )
        typ = str(t.get("type") or "binary")
        if typ not in ("binary", "regression"):
            raise MtlrecError(
                f"dataset.targets.{name}.type '{typ}' is unknown; use binary|regression"
            )
        out.append(
            TaskSpec(
                name=str(name),
                label=str(t["label"]),
                type="binary" if typ == "binary" else "regression",
                where=None if t.get("where") is None else str(t["where"]),
                weight=float(weight),
                sample_weight=None if t.get("sample_weight") is None else str(t["sample_weight"]),
            )
        )
    return out


def raw_sources(cfg: Mapping[str, Any], by: str, split: Mapping[str, Any]) -> list[RawSource]:
    """The raw files of a generic config: one per split (`split.by: files`) or shared by fractions."""
    from mtlrec.data.prepare.config import check_fractions, raw_file
    from mtlrec.data.prepare.plan import SPLITS, RawSource

    raw_dir = cfg.get("raw_dir") or Path(".")  # a Path already (CsvConfig.raw_dir)
    files = cfg.get("files")
    if not files:
        raise MtlrecError(f"dataset '{cfg.get('name') or ''}': dataset.files lists no raw files")
    sources: list[RawSource] = []
    if by == "user_time":  # every file is part of the one log; each row's split comes from it
        return [
            RawSource(raw_file(raw_dir, str(entry), f"dataset.files[{i}]"))
            for i, entry in enumerate(_file_entries(files))
        ]
    if by == "files":
        if not isinstance(files, Mapping):
            raise MtlrecError(
                "dataset.files must map split names to files with split.by=files, e.g. {train: train.csv, val: val.csv, test: test.csv}"
            )
        for key, entry in files.items():
            if isinstance(entry, Mapping):
                path = raw_file(raw_dir, str(entry.get("file")), f"dataset.files.{key}.file")
                fr = check_fractions(f"dataset.files.{key}.fractions", entry.get("fractions"))
                sources.append(RawSource(path, fractions=fr))
            else:
                if key not in SPLITS:
                    raise MtlrecError(
                        f"dataset.files.{key}: '{key}' is not a split; use train, val, test (or give {{file, fractions}})"
                    )
                sources.append(
                    RawSource(raw_file(raw_dir, str(entry), f"dataset.files.{key}"), split=str(key))
                )
        return sources
    entries = _file_entries(files)
    fractions = check_fractions(
        "dataset.split.fractions",
        split.get("fractions") or {"train": 0.8, "val": 0.1, "test": 0.1},
    )
    return [
        RawSource(raw_file(raw_dir, str(entry), f"dataset.files[{i}]"), fractions=fractions)
        for i, entry in enumerate(entries)
    ]


def _file_entries(files: Any) -> list:
    if isinstance(files, str):
        return [files]
    return list(files.values()) if isinstance(files, Mapping) else list(files)


def split_options(cfg: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """(split.by, the dataset.split mapping), checked."""
    from mtlrec.data.prepare.timeline import SPLIT_KEYS

    split = dict(cfg.get("split") or {})
    by = str(split.get("by") or "files")
    if by not in ("files", "random", "column", "user_time"):
        raise MtlrecError(
            f"dataset.split.by '{by}' is unknown; use files, random, column or user_time"
        )
    known = [
        "by",
        *(SPLIT_KEYS if by == "user_time" else ("fractions", "seed", "column", "boundaries")),
    ]
    unknown = sorted(set(split) - set(known))
    if unknown:
        raise MtlrecError(
            f"dataset.split: unknown key(s) {unknown} for split.by={by}; use {', '.join(known)}"
        )
    return by, split


def _boundaries(values: Any) -> tuple[float, float] | None:
    if not values:
        return None
    if not isinstance(values, (list, tuple)) or len(values) != 2:
        raise MtlrecError(f"dataset.split.boundaries must be [train_end, val_end], got {values!r}")
    return float(values[0]), float(values[1])


def generic_plan(config: CsvConfig) -> Plan:
    """The plan of a `preparer: csv` dataset config (bring-your-own data); see README. The
    parsers below read its keys by name (most are free-form mappings the yaml describes)."""
    from mtlrec.data.prepare.config import funnel_policy, read_options, set_dense_options
    from mtlrec.data.prepare.plan import Plan
    from mtlrec.data.prepare.timeline import parse_user_time

    cfg = config.as_mapping()
    name = config.name
    if config.path is None:
        raise MtlrecError(
            f"dataset '{name}': dataset.path (where to write the prepared data) is not set"
        )
    by, split = split_options(cfg)
    sources = raw_sources(cfg, by, split)
    sparse, dense = feature_columns(cfg, sources, read_options(cfg), split)
    plan = Plan(
        name=name,
        path=config.path,
        sources=sources,
        read=read_options(cfg),
        sparse=sparse,
        dense=dense,
        targets=parse_targets(cfg),
        funnel=FunnelSpec(**cfg["funnel"]) if cfg.get("funnel") else None,
        min_count=1 if cfg.get("min_count") is None else int(cfg["min_count"]),
        split_by=by,
        split_seed=0 if split.get("seed") is None else int(split["seed"]),
        split_column=None if split.get("column") is None else str(split["column"]),
        split_fractions=None if by in ("files", "user_time") else sources[0].fractions,
        split_boundaries=_boundaries(split.get("boundaries")),
        user_time=parse_user_time(split) if by == "user_time" else None,
        info={"preparer": "csv"},
        funnel_violations=funnel_policy(cfg),
        sample_weight=None if cfg.get("sample_weight") is None else str(cfg["sample_weight"]),
    )
    set_field_options(plan, cfg)
    if by == "column" and not plan.split_column:
        raise MtlrecError(
            "dataset.split.by=column needs dataset.split.column (a time/order column)"
        )
    set_dense_options(plan, cfg)
    return plan


def feature_columns(cfg, sources, read, split) -> tuple[list[str], list[str]]:
    """dataset.sparse / dataset.dense with their patterns expanded against the first file's header."""
    from mtlrec.data.prepare.fieldconfig import expand_columns, named_columns
    from mtlrec.data.prepare.reading import header_columns

    raw_sparse, raw_dense = cfg.get("sparse") or [], cfg.get("dense") or []
    plain = all(isinstance(v, str) for v in (_entries(raw_sparse) + _entries(raw_dense)))
    if plain:
        return _str_list(cfg, "sparse"), _str_list(cfg, "dense")
    header = header_columns(sources[0].path, read)
    taken = named_columns(raw_sparse) | named_columns(raw_dense)
    taken |= set(cfg.get("bags") or {}) | set(cfg.get("sequences") or {})
    for t in (cfg.get("targets") or {}).values():
        if isinstance(t, str):
            taken.add(t)
        elif isinstance(t, Mapping):
            taken |= {str(t[k]) for k in ("label", "where", "sample_weight") if t.get(k)}
    taken |= {str(v) for v in (cfg.get("funnel") or {}).values() if v}
    if cfg.get("sample_weight"):
        taken.add(str(cfg["sample_weight"]))
    for key in ("column", "time"):  # the split's time column is no feature unless named
        if split.get(key):
            taken.add(str(split[key]))
    sparse = expand_columns(raw_sparse, "sparse", header, taken)
    dense = expand_columns(raw_dense, "dense", header, taken | set(sparse))
    return sparse, dense


def _entries(value: Any) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value] if value else []


def set_field_options(plan: Plan, cfg: Mapping[str, Any]) -> None:
    """Bags, sequences, hashed fields, string labels and feature groups of a config."""
    from mtlrec.data.prepare.fieldconfig import label_maps, parse_hash_buckets, parse_multi

    plan.multi = parse_multi(cfg)
    plan.hash_buckets = parse_hash_buckets(cfg, plan.sparse)
    plan.label_maps = label_maps(cfg)
    groups = cfg.get("feature_groups") or {}
    if not isinstance(groups, Mapping):
        raise MtlrecError(f"dataset.feature_groups must map group names to fields, got {groups!r}")
    plan.feature_groups = {str(g): [str(n) for n in _entries(v)] for g, v in groups.items()}


@register
class Csv(DatasetSource):
    name = "csv"
    Config = CsvConfig
    preparable = True
    keeps_sample_weight = True

    def prepare(self, cfg, out_dir):
        from mtlrec.data.prepare import run_plan

        return run_plan(generic_plan(cfg), out_dir)
