"""The feature keys of a dataset config beyond plain column lists (see docs/datasets.md):

sparse: [user_id, {pattern: "c[0-9]+"}]     names, regex patterns (full match) or {glob: "c*"}
dense: {glob: "x*"}
bags: {genres: {sep: "|", max_len: 6, pooling: mean}, tags: {weighted: true, max_len: 20}}
sequences: {history: {max_len: 50, shares_vocab_with: item_id,
                      pooling: target_attention, target: item_id},
            clicked: {from: {user: user_id, item: item_id, time: ts, max_len: 50}}  (built)
hash_buckets: {user_id: 100000}              single-id fields hashed instead of counted
targets: {income: {label: income, positive: ">50K", negative: "<=50K"}}
feature_groups: {user: [user_id, history], item: [item_id, genres]}
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from mtlrec.config_schema import build
from mtlrec.data.prepare.plan import LabelMap, MultiField
from mtlrec.data.prepare.timeline import parse_from
from mtlrec.data.spec import POOLINGS
from mtlrec.errors import MtlrecError


@dataclass
class MultiConfig:
    """dataset.bags.NAME / dataset.sequences.NAME."""

    max_len: int = 20
    sep: str = "|"
    weighted: bool = False
    weight_sep: str = ":"
    shares_vocab_with: str | None = None
    pooling: Literal["sum", "mean", "max", "weighted_sum", "target_attention"] | None = None
    target: str | None = None
    hash_buckets: int | None = None
    embedding_dim: int | None = None

    def validate(self) -> None:
        if self.max_len < 1:
            raise MtlrecError(f"max_len must be >= 1, got {self.max_len}")
        if not self.sep or not self.weight_sep:
            raise MtlrecError("sep and weight_sep must not be empty")
        if self.hash_buckets is not None and self.hash_buckets < 1:
            raise MtlrecError(f"hash_buckets must be >= 1, got {self.hash_buckets}")


def parse_multi(cfg: Mapping[str, Any]) -> list[MultiField]:
    out = []
    for kind, key in (("bag", "bags"), ("sequence", "sequences")):
        entries = cfg.get(key) or {}
        if not isinstance(entries, Mapping):
            raise MtlrecError(
                f"dataset.{key} must map column names to options, e.g. {{genres: {{sep: '|', max_len: 6}}}}"
            )
        for name, opts in entries.items():
            prefix = f"dataset.{key}.{name}"
            opts = dict(opts or {})
            log = {}
            if kind == "sequence" and "from" in opts:  # built from the event log (timeline.py)
                log = parse_from(prefix, opts.pop("from"), opts.get("max_len"))
                opts.setdefault("shares_vocab_with", log["log_item"])
                opts.setdefault("max_len", log.pop("max_len", MultiConfig.max_len))
            try:
                c = build(MultiConfig, opts, prefix)
            except MtlrecError as e:
                msg = str(e)
                raise MtlrecError(msg if msg.startswith(prefix) else f"{prefix}: {msg}") from None
            if kind == "bag" and c.shares_vocab_with:
                raise MtlrecError(
                    f"{prefix}: shares_vocab_with is for sequences; list the column under dataset.sequences"
                )
            if c.shares_vocab_with and c.hash_buckets:
                raise MtlrecError(
                    f"{prefix}: a sequence sharing the vocabulary of '{c.shares_vocab_with}' is hashed like it; drop hash_buckets"
                )
            assert c.pooling is None or c.pooling in POOLINGS
            out.append(MultiField(name=str(name), kind=kind, **vars(c), **log))
    return out


def parse_hash_buckets(cfg: Mapping[str, Any], sparse: list[str]) -> dict[str, int]:
    value = cfg.get("hash_buckets") or {}
    if not isinstance(value, Mapping):
        raise MtlrecError(
            f"dataset.hash_buckets must map sparse columns to bucket counts, got {value!r}"
        )
    out = {}
    for col, n in value.items():
        if col not in sparse:
            raise MtlrecError(
                f"dataset.hash_buckets.{col}: '{col}' is not a sparse column ({sparse}); a bag/sequence takes hash_buckets in its own options"
            )
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise MtlrecError(f"dataset.hash_buckets.{col} must be an integer >= 1, got {n!r}")
        out[str(col)] = n
    return out


def label_maps(cfg: Mapping[str, Any]) -> dict[str, LabelMap]:
    """Label column -> positive/negative values of binary targets with string labels."""
    out: dict[str, LabelMap] = {}
    for name, t in (cfg.get("targets") or {}).items():
        if not isinstance(t, Mapping) or t.get("positive") is None:
            if isinstance(t, Mapping) and t.get("negative") is not None:
                raise MtlrecError(f"dataset.targets.{name}: negative needs positive too")
            continue
        if str(t.get("type") or "binary") != "binary":
            raise MtlrecError(f"dataset.targets.{name}: positive is for binary targets only")
        pos = _values(t["positive"], f"dataset.targets.{name}.positive")
        neg = t.get("negative")
        mapping = LabelMap(
            pos, _values(neg, f"dataset.targets.{name}.negative") if neg is not None else None
        )
        col = str(t["label"])
        if col in out and out[col] != mapping:
            raise MtlrecError(
                f"dataset.targets.{name}: label column '{col}' has other positive values in another target"
            )
        out[col] = mapping
    return out


def _values(value: Any, key: str) -> tuple[str, ...]:
    items = value if isinstance(value, (list, tuple)) else [value]
    if not items or any(isinstance(v, (Mapping, list, tuple)) or v is None for v in items):
        raise MtlrecError(f"{key} must be a value or a list of values, got {value!r}")
    return tuple(str(v).strip() for v in items)


def expand_columns(value: Any, key: str, header: list[str], taken: set[str]) -> list[str]:
    """Column names from names, {pattern: regex} and {glob: ...} entries, in header order per entry.

    A pattern matches only columns not `taken` (labels, the split column, columns listed by name
    elsewhere); a pattern that matches nothing is an error.
    """
    entries = value if isinstance(value, (list, tuple)) else [value] if value else []
    out: list[str] = []
    for entry in entries:
        if isinstance(entry, str):
            out.append(entry)
            continue
        if (
            not isinstance(entry, Mapping)
            or len(entry) != 1
            or next(iter(entry)) not in ("pattern", "glob")
        ):
            raise MtlrecError(
                f"dataset.{key}: {entry!r} is neither a column name nor {{pattern: REGEX}} / {{glob: GLOB}}"
            )
        ((kind, pat),) = entry.items()
        if kind == "pattern":
            try:
                rx = re.compile(str(pat))
            except re.error as e:
                raise MtlrecError(
                    f"dataset.{key}: pattern {pat!r} is not a valid regex ({e})"
                ) from None
            hits = [c for c in header if rx.fullmatch(c)]
        else:
            hits = fnmatch.filter(header, str(pat))
        hits = [c for c in hits if c not in taken and c not in out]
        if not hits:
            raise MtlrecError(
                f"dataset.{key}: {kind} {pat!r} matches no column; the file has {header[:12]}{' ...' if len(header) > 12 else ''}"
            )
        out += hits
    return out


def named_columns(value: Any) -> set[str]:
    entries = value if isinstance(value, (list, tuple)) else [value] if value else []
    return {e for e in entries if isinstance(e, str)}
