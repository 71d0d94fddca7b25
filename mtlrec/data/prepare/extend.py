"""`dataset.vocab_from=PREPARED_DIR`: prepare today's data with yesterday's ids.

    mtlrec prepare --config-dir my_conf dataset=my_data dataset.raw_dir=raw/day2 \\
        dataset.path=prepared/day2 dataset.vocab_from=prepared/day1

Every counted field starts from the old dataset's vocabulary: its values keep their ids (also
values today's train split no longer has), and the values seen today (at least `min_count` times
in today's train split) that it lacks get the next ids, most frequent first, ties by value (as
prepare orders a vocabulary). Hashed fields are unchanged (the same hash and bucket count give
the same ids). The dense transforms are fitted on today's train split, as in any prepare.

What cannot be extended is one line before anything is written: another set of embedded fields,
a field hashed there and counted here (or hashed into another number of buckets). The prepared
spec records where its ids came from (`info.vocab_from`: the dir, the old vocabulary sizes, and
how many values each field added). A model trained on the old dataset is carried over onto the
new one with `mtlrec train init_from=RUN_DIR` (rows by raw value: mtlrec.training.carry_rows).
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pyarrow as pa

from mtlrec.data.prepare.fitting import Fitted
from mtlrec.data.prepare.plan import Plan
from mtlrec.data.spec import DatasetSpec
from mtlrec.errors import MtlrecError

# The dir of the prepare running in this context (set by prepare_dataset for the whole prepare,
# whichever source builds the plan: every source ends in run_plan, which reads it).
_VOCAB_FROM: contextvars.ContextVar[Path | None] = contextvars.ContextVar(
    "vocab_from", default=None
)


@contextlib.contextmanager
def vocab_from(base: Path | None) -> Iterator[Path | None]:
    """Within the block, run_plan extends the vocabularies of the dataset at `base`
    (dataset.vocab_from, typed by the source's Config: `~` expanded already)."""
    if base is not None:
        check_base(base)
    token = _VOCAB_FROM.set(base)
    try:
        yield base
    finally:
        _VOCAB_FROM.reset(token)


def check_base(base: Path) -> DatasetSpec:
    """The old dataset is a prepared one with a vocabulary (one line otherwise)."""
    where = f"dataset.vocab_from={base}"
    if not base.is_dir():
        raise MtlrecError(f"{where}: no such directory; give the dir of a prepared dataset")
    if not (base / "spec.json").is_file() or not (base / "vocab.parquet").is_file():
        raise MtlrecError(
            f"{where}: not a dataset prepared by `mtlrec prepare` (no spec.json and "
            "vocab.parquet); give the dir of one"
        )
    return DatasetSpec.load(base)  # its checksums: a damaged file is one line naming it


def extend_fitted(plan: Plan, fitted: Fitted) -> Fitted:
    """Today's fit with the old vocabularies in front (nothing to do outside `vocab_from`)."""
    from mtlrec.data.vocabulary import read_vocabularies

    base = _VOCAB_FROM.get()
    if base is None:
        return fitted
    old_spec = check_base(base)
    check_fields(plan, old_spec, base)
    old_vocab = read_vocabularies(base)
    vocab, counts, added = dict(fitted.vocab), dict(fitted.counts), {}
    for name, today in fitted.vocab.items():  # the counted fields
        old = old_vocab.get(name, [])
        seen = dict(zip(today.to_pylist(), fitted.counts[name].to_pylist(), strict=True))
        kept = set(old)
        new_values = [v for v in today.to_pylist() if v not in kept]
        vocab[name] = pa.array(old + new_values, pa.string())
        counts[name] = pa.array([seen.get(v, 0) for v in old + new_values], pa.int64())
        added[name] = len(new_values)
    plan.info["vocab_from"] = {
        "path": str(base.resolve()),
        "dataset": old_spec.name,
        "vocab_sizes": {f.name: f.vocab_size for f in old_spec.vocab_owners},
        "added": added,
    }
    return replace(fitted, vocab=vocab, counts=counts)


def check_fields(plan: Plan, old_spec: DatasetSpec, base: Path) -> None:
    """The same embedded fields, each counted or hashed into the same buckets, on both sides."""
    where = f"dataset.vocab_from={base}"
    owners = plan.sparse + [m.name for m in plan.multi if not m.shares_vocab_with]
    old = {f.name: f for f in old_spec.vocab_owners}
    if set(owners) != set(old):
        only_here = sorted(set(owners) - set(old))
        only_there = sorted(set(old) - set(owners))
        raise MtlrecError(
            f"{where}: its embedded fields differ from this dataset's (only here: {only_here}, "
            f"only there: {only_there}); extend a dataset with the same fields, or prepare "
            "without vocab_from"
        )
    for name in owners:
        here, there = plan.buckets(name), old[name].hash_buckets
        if here != there:
            raise MtlrecError(
                f"{where}: field '{name}' is hashed into {there or 'no'} buckets there and "
                f"{here or 'no'} here, so its ids cannot be kept; use the same "
                "dataset.hash_buckets, or prepare without vocab_from"
            )
