"""run_plan: fit on train, encode every split, write vocab.parquet and spec.json last."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from mtlrec.data.prepare.config import check_plan
from mtlrec.data.prepare.encoding import SplitSummary, encode
from mtlrec.data.prepare.fitting import Fitted, fit
from mtlrec.data.prepare.plan import OOV_ID, SPLITS, VOCAB_FILE, Plan
from mtlrec.data.prepare.splitting import column_cuts
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
    for c in plan.sparse:
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
    features = [
        FeatureSpec(c, "sparse", len(fitted.vocab[c]) + 1, oov_id=OOV_ID) for c in plan.sparse
    ]
    features += [FeatureSpec(c, "dense") for c in plan.dense]
    names = plan.source_names or [str(s.path) for s in plan.sources]
    info = {
        **plan.info,
        "sources": [
            {"file": name, **({"split": s.split} if s.split else {"fractions": s.fractions})}
            for s, name in zip(plan.sources, names, strict=True)
        ],
        "split": {"by": plan.split_by, "seed": plan.split_seed}
        | ({"column": plan.split_column, "cuts": list(cuts)} if cuts else {}),
        "rows": {s: summary[s].rows for s in SPLITS},
        "min_count": plan.min_count,
        "oov_id": OOV_ID,
        "vocab_file": VOCAB_FILE,
        "dense": fitted.dense,
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
    )


def run_plan(plan: Plan, out_dir: Path) -> Result:
    """Fit on train, encode every split into out_dir, write vocab.parquet and spec.json last."""
    check_plan(plan)
    cuts = column_cuts(plan) if plan.split_by == "column" else None
    fitted = fit(plan, cuts)
    summary = encode(plan, fitted, cuts, out_dir)
    write_vocab(plan, fitted, out_dir)
    spec = build_spec(plan, fitted, summary, cuts)
    spec.validate(str(out_dir / SPEC_FILE))
    spec.save(out_dir)
    return Result(plan.path, spec, summary, {c: len(fitted.vocab[c]) + 1 for c in plan.sparse})
