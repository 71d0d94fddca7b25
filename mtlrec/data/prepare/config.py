"""Dataset config -> Plan: the generic (`preparer: csv`) plan and the option parsers every preparer uses."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mtlrec.data.funnel import check_policy
from mtlrec.data.prepare.fieldconfig import (
    expand_columns,
    label_maps,
    named_columns,
    parse_hash_buckets,
    parse_multi,
)
from mtlrec.data.prepare.plan import (
    NONFINITE_POLICIES,
    SPLITS,
    TRANSFORMS,
    Plan,
    RawSource,
    ReadOptions,
)
from mtlrec.data.prepare.reading import header_columns
from mtlrec.data.prepare.timeline import SPLIT_KEYS, check_built, parse_user_time
from mtlrec.data.spec import FunnelSpec, TaskSpec
from mtlrec.errors import MtlrecError


def _key(cfg: Mapping[str, Any], key: str, default: Any = None) -> Any:
    value = cfg.get(key, default)
    return default if value is None else value


def _str_list(cfg: Mapping[str, Any], key: str) -> list[str]:
    value = cfg.get(key) or []
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)):
        raise MtlrecError(f"dataset.{key} must be a list of column names, got {value!r}")
    return [str(v) for v in value]


def check_fractions(key: str, fractions: Any) -> dict[str, float]:
    if not isinstance(fractions, Mapping) or not fractions:
        raise MtlrecError(
            f"{key} must map split names to shares, e.g. {{train: 0.8, val: 0.1, test: 0.1}}; got {fractions!r}"
        )
    out = {}
    for split, share in fractions.items():
        if split not in SPLITS:
            raise MtlrecError(f"{key}: unknown split '{split}'; use train, val, test")
        if not isinstance(share, (int, float)) or not 0 < share <= 1:
            raise MtlrecError(f"{key}.{split} must be a number in (0, 1], got {share!r}")
        out[str(split)] = float(share)
    if not math.isclose(sum(out.values()), 1.0, abs_tol=1e-6):
        raise MtlrecError(f"{key}: shares must sum to 1, got {sum(out.values()):g} ({out})")
    return out


def raw_file(raw_dir: Path, name: str, key: str) -> Path:
    """A raw file path (relative names are under raw_dir); must exist and not be empty."""
    path = Path(name).expanduser()
    if not path.is_absolute():
        path = raw_dir / path
    if not path.is_file():
        raise MtlrecError(
            f"{path}: raw file ({key}) not found; put it there or set dataset.raw_dir / {key}"
        )
    if path.stat().st_size == 0:
        raise MtlrecError(f"{path}: the raw file ({key}) is empty (0 bytes)")
    return path


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


def read_options(cfg: Mapping[str, Any]) -> ReadOptions:
    fmt = str(_key(cfg, "format", "auto"))
    if fmt not in ("auto", "csv", "tsv", "parquet"):
        raise MtlrecError(f"dataset.format '{fmt}' is unknown; use auto, csv, tsv or parquet")
    names = cfg.get("column_names")
    header = bool(_key(cfg, "header", True))
    if not header and not names:
        raise MtlrecError("dataset.header is false: list the columns in dataset.column_names")
    block = float(_key(cfg, "block_size_mb", 1.0))
    if not block > 0:
        raise MtlrecError(f"dataset.block_size_mb must be > 0, got {block}")
    return ReadOptions(
        format=fmt,
        delimiter=cfg.get("delimiter"),
        header=header,
        column_names=tuple(str(n) for n in names) if names else None,
        block_size_mb=block,
    )


def raw_sources(cfg: Mapping[str, Any], by: str, split: Mapping[str, Any]) -> list[RawSource]:
    """The raw files of a generic config: one per split (`split.by: files`) or shared by fractions."""
    raw_dir = Path(str(_key(cfg, "raw_dir", "."))).expanduser()
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


def funnel_policy(cfg: Mapping[str, Any]) -> str:
    """dataset.funnel_violations: error (default) | drop."""
    return check_policy(_key(cfg, "funnel_violations", "error"))


def _boundaries(values: Any) -> tuple[float, float] | None:
    if not values:
        return None
    if not isinstance(values, (list, tuple)) or len(values) != 2:
        raise MtlrecError(f"dataset.split.boundaries must be [train_end, val_end], got {values!r}")
    return float(values[0]), float(values[1])


def generic_plan(cfg: Mapping[str, Any]) -> Plan:
    """The plan of a `preparer: csv` dataset config (bring-your-own data); see README."""
    name = str(cfg.get("name") or "")
    if not cfg.get("path"):
        raise MtlrecError(
            f"dataset '{name}': dataset.path (where to write the prepared data) is not set"
        )
    by, split = split_options(cfg)
    sources = raw_sources(cfg, by, split)
    sparse, dense = feature_columns(cfg, sources, read_options(cfg), split)
    plan = Plan(
        name=name,
        path=Path(str(cfg["path"])).expanduser(),
        sources=sources,
        read=read_options(cfg),
        sparse=sparse,
        dense=dense,
        targets=parse_targets(cfg),
        funnel=FunnelSpec(**cfg["funnel"]) if cfg.get("funnel") else None,
        min_count=int(_key(cfg, "min_count", 1)),
        split_by=by,
        split_seed=int(_key(split, "seed", 0)),
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
    plan.multi = parse_multi(cfg)
    plan.hash_buckets = parse_hash_buckets(cfg, plan.sparse)
    plan.label_maps = label_maps(cfg)
    groups = cfg.get("feature_groups") or {}
    if not isinstance(groups, Mapping):
        raise MtlrecError(f"dataset.feature_groups must map group names to fields, got {groups!r}")
    plan.feature_groups = {str(g): [str(n) for n in _entries(v)] for g, v in groups.items()}


def set_dense_options(plan: Plan, cfg: Mapping[str, Any]) -> None:
    """Per-column transform and fill value from dataset.dense_transform(s) / dense_fill(s), and
    dataset.dense_nonfinite (what an inf, NaN or overflowing value becomes)."""
    policy = str(_key(cfg, "dense_nonfinite", "error"))
    if policy not in NONFINITE_POLICIES:
        raise MtlrecError(
            f"dataset.dense_nonfinite: {policy!r} is unknown; use one of {list(NONFINITE_POLICIES)}"
        )
    plan.dense_nonfinite = policy
    default_t = str(_key(cfg, "dense_transform", "standardize"))
    default_f = _key(cfg, "dense_fill", 0.0)
    per_t = dict(cfg.get("dense_transforms") or {})
    per_f = dict(cfg.get("dense_fills") or {})
    for key, per in (("dense_transforms", per_t), ("dense_fills", per_f)):
        stray = sorted(set(per) - set(plan.dense))
        if stray:
            raise MtlrecError(f"dataset.{key}: {stray} not among the dense columns {plan.dense}")
    for col in plan.dense:
        t = str(per_t.get(col, default_t))
        if t not in TRANSFORMS:
            raise MtlrecError(
                f"dense transform '{t}' of column '{col}' is unknown; use one of {list(TRANSFORMS)}"
            )
        fill = per_f.get(col, default_f)
        if not isinstance(fill, (int, float)) or not math.isfinite(fill):
            raise MtlrecError(
                f"dense fill value of column '{col}' must be a finite number, got {fill!r}"
            )
        plan.transforms[col], plan.fills[col] = t, float(fill)


def check_plan(plan: Plan) -> None:
    """Config-level mistakes, before any file is read."""
    if plan.min_count < 1:
        raise MtlrecError(f"dataset.min_count must be >= 1, got {plan.min_count}")
    if not plan.sparse and not plan.dense:
        raise MtlrecError(
            f"dataset '{plan.name}': no features; list columns in dataset.sparse / dataset.dense"
        )
    features = plan.sparse + plan.multi_names + plan.dense
    dupes = sorted({c for c in features if features.count(c) > 1})
    if dupes:
        raise MtlrecError(
            f"dataset '{plan.name}': column(s) {dupes} listed twice among sparse/bags/sequences/dense features"
        )
    check_multi_plan(plan)
    for t in plan.targets:
        for role, col in (("label", t.label), ("where", t.where)):
            if col and col in features:
                kind = (
                    "sparse"
                    if col in plan.sparse
                    else "dense"
                    if col in plan.dense
                    else "bags/sequences"
                )
                raise MtlrecError(
                    f"dataset.{kind} lists '{col}', the {role} column of task '{t.name}'; a label column cannot also be a feature: remove it from dataset.{kind}"
                )
    if plan.split_column and plan.split_column in plan.labels:
        raise MtlrecError(f"dataset.split.column '{plan.split_column}' is a label column")
    check_weight_plan(plan, features)
    if plan.split_by == "user_time":
        return  # every split gets the rows the users' time order gives it
    covered = set()
    for s in plan.sources:
        covered |= {s.split} if s.split else set(s.fractions or {})
    missing = [s for s in SPLITS if s not in covered]
    if missing:
        raise MtlrecError(
            f"dataset '{plan.name}': no rows go to split(s) {missing}; give a file for each or split one by fractions"
        )


def check_multi_plan(plan: Plan) -> None:
    check_built(plan)
    for m in plan.multi:
        key = f"dataset.{m.kind}s.{m.name}"
        for what, other in (("shares_vocab_with", m.shares_vocab_with), ("target", m.target)):
            if other is not None and other not in plan.sparse:
                raise MtlrecError(
                    f"{key}: {what} '{other}' is not a sparse column; use one of {plan.sparse}"
                )
        pool = m.pooling or ("weighted_sum" if m.weighted else "mean")
        if pool == "weighted_sum" and not m.weighted:
            raise MtlrecError(
                f"{key}: pooling weighted_sum needs weighted: true (id:weight values)"
            )
        if (pool == "target_attention") != (m.target is not None):
            raise MtlrecError(
                f"{key}: pooling target_attention and target: <sparse column> go together"
            )
    embedded = plan.sparse + plan.multi_names
    seen: dict[str, str] = {}
    for group, names in plan.feature_groups.items():
        for n in names:
            if n not in embedded:
                raise MtlrecError(
                    f"dataset.feature_groups.{group}: '{n}' is not a sparse/bag/sequence column; use one of {embedded}"
                )
            if n in seen:
                raise MtlrecError(
                    f"dataset.feature_groups: '{n}' is in both '{seen[n]}' and '{group}'"
                )
            seen[n] = group


def check_weight_plan(plan: Plan, features: list[str]) -> None:
    """A sample weight column is its own column: no feature, label, where or funnel column."""
    targets = {c for t in plan.targets for c in (t.label, t.where) if c}
    targets |= set(plan.funnel.columns) if plan.funnel is not None else set()
    for col in plan.weight_columns:
        if col in features or col in targets:
            role = "a feature" if col in features else "a label/where/funnel column"
            raise MtlrecError(
                f"dataset.sample_weight '{col}' is also {role}; weigh rows by a column of their own"
            )
