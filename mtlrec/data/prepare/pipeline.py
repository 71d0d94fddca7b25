"""run_plan: fit on train, encode every split, write vocab.parquet and spec.json last."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from mtlrec.data.prepare.config import check_plan
from mtlrec.data.prepare.encoding import SplitSummary, encode
from mtlrec.data.prepare.extend import extend_fitted
from mtlrec.data.prepare.fitting import Fitted, fit
from mtlrec.data.prepare.plan import OOV_ID, SPLITS, VOCAB_FILE, Plan
from mtlrec.data.prepare.reading import header_columns
from mtlrec.data.prepare.splitting import column_cuts
from mtlrec.data.prepare.timeline import Timeline, build_timeline
from mtlrec.data.spec import SPEC_FILE, DatasetSpec, FeatureSpec


@dataclass
class Result:
    path: Path
    spec: DatasetSpec
    summary: dict[str, SplitSummary]
    vocab_sizes: dict[str, int]


VOCAB_SCHEMA = pa.schema(
    [
        ("field", pa.string()),
        ("value", pa.string()),
        ("id", pa.int32()),
        ("train_count", pa.int64()),
    ]
)


def write_vocab(plan: Plan, fitted: Fitted, out_dir: Path) -> None:
    rows: dict[str, list] = {"field": [], "value": [], "id": [], "train_count": []}
    for c in fitted.vocab:
        n = len(fitted.vocab[c])
        rows["field"] += [c] * n
        rows["value"] += fitted.vocab[c].to_pylist()
        rows["id"] += list(range(1, n + 1))
        rows["train_count"] += fitted.counts[c].to_pylist()
    pq.write_table(pa.table(rows, schema=VOCAB_SCHEMA), out_dir / VOCAB_FILE)


def build_spec(
    plan: Plan,
    fitted: Fitted,
    summary: dict[str, SplitSummary],
    cuts: tuple[float, float] | None,
) -> DatasetSpec:
    sizes = vocab_sizes(plan, fitted)
    features = [
        FeatureSpec(c, "sparse", sizes[c], oov_id=OOV_ID, hash_buckets=plan.buckets(c))
        for c in plan.sparse
    ]
    features += [
        FeatureSpec(
            m.name,
            m.kind,  # type: ignore[arg-type]
            sizes[m.name],
            oov_id=OOV_ID,
            embedding_dim=m.embedding_dim,
            max_len=m.max_len,
            weighted=m.weighted,
            shares_vocab_with=m.shares_vocab_with,
            pooling=m.pooling,
            target=m.target,
            hash_buckets=plan.buckets(m.name),
        )
        for m in plan.multi
    ]
    features += [FeatureSpec(c, "dense") for c in plan.dense]
    names = plan.source_names or [str(s.path) for s in plan.sources]
    timeline_info = plan.timeline.info if isinstance(plan.timeline, Timeline) else {}
    info = {
        **plan.info,
        "sources": [
            {
                "file": name,
                **(
                    {"split": s.split}
                    if s.split
                    else {"fractions": s.fractions}
                    if s.fractions
                    else {}
                ),
            }
            for s, name in zip(plan.sources, names, strict=True)
        ],
        "split": {"by": plan.split_by, "seed": plan.split_seed}
        | ({"column": plan.split_column, "cuts": list(cuts)} if cuts else {})
        | (timeline_info.get("split") or {}),
        "rows": {s: summary[s].rows for s in SPLITS},
        "min_count": plan.min_count,
        "oov_id": OOV_ID,
        "vocab_file": VOCAB_FILE,
        "dense": fitted.dense,
        "unused_columns": unused_columns(plan),
    }
    if timeline_info.get("sequences_from_log"):
        info["sequences_from_log"] = timeline_info["sequences_from_log"]
    if fitted.hashing:
        info["hashing"] = {c: occ.estimate() for c, occ in fitted.hashing.items()}
    if plan.multi:
        info["truncated_rows"] = {
            m.name: {s: summary[s].truncated.get(m.name, 0) for s in SPLITS} for m in plan.multi
        }
    dropped = {s: summary[s].dropped for s in SPLITS if summary[s].dropped}
    if plan.funnel_pairs:
        info["funnel_violations"] = {"policy": plan.funnel_violations, "dropped": dropped}
    return DatasetSpec(
        name=plan.name,
        features=tuple(features),
        labels=tuple(plan.labels),
        tasks=tuple(plan.targets),
        funnel=plan.funnel,
        splits={s: f"{s}.parquet" for s in SPLITS},
        info=info,
        feature_groups={g: list(v) for g, v in plan.feature_groups.items()},
        sample_weight=plan.sample_weight,
    )


def unused_columns(plan: Plan) -> list[str]:
    """Raw columns of the sources that the dataset config does not use (no feature, label or
    split column): listed in spec.json and the prepare summary, so a forgotten one is seen."""
    used = set(plan.needed_raw_columns()) | set(plan.log_columns())
    seen: dict[str, None] = {}
    for source in plan.sources:
        for c in header_columns(source.path, plan.read):
            if c not in used:
                seen.setdefault(c)
    return list(seen)


def vocab_sizes(plan: Plan, fitted: Fitted) -> dict[str, int]:
    """Ids per embedded field: V + 1 (id 0 = OOV), or hash buckets + 1."""
    out = {}
    for c in plan.sparse + plan.multi_names:
        buckets = plan.buckets(c)
        m = next((m for m in plan.multi if m.name == c), None)
        owner = m.shares_vocab_with if m is not None and m.shares_vocab_with else c
        out[c] = buckets + 1 if buckets else len(fitted.vocab[owner]) + 1
    return out


def run_plan(plan: Plan, out_dir: Path) -> Result:
    """Fit on train, encode every split into out_dir, write vocab.parquet and spec.json last."""
    from mtlrec.data.encoders import write_encoders  # it imports this package

    check_plan(plan)
    cuts = column_cuts(plan) if plan.split_by == "column" else None
    if plan.user_time is not None or plan.built:  # one pass over the log's user/time/item columns
        plan.timeline = build_timeline(plan)
    fitted = extend_fitted(plan, fit(plan, cuts))  # dataset.vocab_from: the old ids kept
    summary = encode(plan, fitted, cuts, out_dir)
    write_vocab(plan, fitted, out_dir)
    spec = build_spec(plan, fitted, summary, cuts)
    spec.validate(str(out_dir / SPEC_FILE))
    write_encoders(plan, fitted, out_dir, spec)
    spec.save(out_dir)
    return Result(plan.path, spec, summary, vocab_sizes(plan, fitted))
