"""The option parsers every dataset's plan uses (raw files, read options, dense transforms, funnel
policy) and the checks of a finished Plan; the generic `preparer: csv` plan is sources/csv.py."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mtlrec.data.funnel import check_policy
from mtlrec.data.prepare.plan import (
    NONFINITE_POLICIES,
    SPLITS,
    TRANSFORMS,
    Plan,
    ReadOptions,
)
from mtlrec.data.prepare.timeline import check_built
from mtlrec.errors import MtlrecError


def _key(cfg: Mapping[str, Any], key: str, default: Any = None) -> Any:
    value = cfg.get(key, default)
    return default if value is None else value


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


def funnel_policy(cfg: Mapping[str, Any]) -> str:
    """dataset.funnel_violations: error (default) | drop."""
    return check_policy(_key(cfg, "funnel_violations", "error"))


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
