"""The encoders of a prepared dataset, kept next to it, and raw rows encoded exactly like prepare.

`mtlrec prepare` writes `encoders.json` (columns, bag/sequence options, hash settings, dense
transform parameters, string-label maps, how the raw files were parsed) next to spec.json and
vocab.parquet. `encode_raw(rows, dataset_dir)` replays the same encoding code on raw rows (a
CSV/TSV/parquet file read with the dataset's parse options, a pandas DataFrame or an arrow
table), so its output equals the prepared rows bit for bit; values never seen in train map to
the OOV id and are counted in the report.

A DataFrame's sparse columns should hold the raw text (`pd.read_csv(path, dtype=str)`): a float
column would turn `2.50` into `2.5`, another vocabulary key. Datasets whose source derives columns
in code (census, ali-ccp, ...) cannot be replayed from their raw release here; encode the derived
columns instead.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import torch

from mtlrec.data.prepare.plan import VOCAB_FILE, LabelMap, MultiField, Plan, RawSource, ReadOptions
from mtlrec.data.spec import PAD_ID, DatasetSpec
from mtlrec.errors import MtlrecError

ENCODERS_FILE = "encoders.json"
ENCODERS_VERSION = 1


def write_encoders(plan: Plan, fitted, out_dir: Path, spec: DatasetSpec | None = None) -> Path:
    """encoders.json; with the spec, also the model input layout (columns of sparse / dense)."""
    layout = spec.layout if spec is not None else None
    doc = {
        "version": ENCODERS_VERSION,
        "preparer": plan.info.get("preparer"),
        "replayable": plan.transform is None,
        "read": {**asdict(plan.read), "column_names": plan.read.column_names},
        "sparse": plan.sparse,
        "hash_buckets": plan.hash_buckets,
        "multi": [asdict(m) for m in plan.multi],
        "dense": fitted.dense,
        "dense_columns": plan.dense,
        "label_maps": {c: asdict(m) for c, m in plan.label_maps.items()},
        "vocab_file": VOCAB_FILE,
    }
    if spec is not None and layout is not None:
        doc["layout"] = {
            "sparse": {k: list(v) for k, v in layout.sparse.items()},
            "dense": {k: list(v) for k, v in layout.dense.items()},
            "weights": {k: list(v) for k, v in layout.weights.items()},
            "sparse_width": layout.sparse_width,
            "dense_width": layout.dense_width,
            "pad_id": PAD_ID,
            "vocab_offsets": spec.vocab_offsets,
        }
    path = Path(out_dir) / ENCODERS_FILE
    path.write_text(json.dumps(doc, indent=2) + "\n")
    return path


@dataclass
class RawReport:
    """What encode_raw did: rows, values mapped to the OOV id and cells cut to max_len, per field."""

    rows: int = 0
    oov: dict[str, int] = field(default_factory=dict)
    truncated: dict[str, int] = field(default_factory=dict)
    labels: torch.Tensor | None = None  # the label columns, when the raw rows hold all of them


def _load(dataset_dir: Path) -> tuple[DatasetSpec, Plan, Any]:
    from mtlrec.data.prepare.fitting import Fitted

    spec = DatasetSpec.load(dataset_dir)
    path = dataset_dir / ENCODERS_FILE
    if not path.is_file():
        raise MtlrecError(
            f"{path}: no encoders (the dataset was prepared before they were kept); prepare it again with overwrite=true"
        )
    doc = json.loads(path.read_text())
    if not doc.get("replayable", False):
        raise MtlrecError(
            f"{dataset_dir}: dataset '{spec.name}' (preparer {doc.get('preparer')}) derives its columns in code; encode_raw needs a dataset prepared from plain columns (preparer csv)"
        )
    read = doc["read"]
    read["column_names"] = tuple(read["column_names"]) if read.get("column_names") else None
    plan = Plan(
        name=spec.name,
        path=dataset_dir,
        sources=[],
        read=ReadOptions(**read),
        sparse=list(doc["sparse"]),
        dense=list(doc["dense_columns"]),
        targets=list(spec.tasks),
        funnel=spec.funnel,
        multi=[MultiField(**m) for m in doc["multi"]],
        hash_buckets=dict(doc["hash_buckets"]),
        label_maps={
            c: LabelMap(tuple(m["positive"]), tuple(m["negative"]) if m["negative"] else None)
            for c, m in doc["label_maps"].items()
        },
    )
    plan.transforms = {c: p["transform"] for c, p in doc["dense"].items()}
    plan.fills = {c: p["fill"] for c, p in doc["dense"].items()}
    vocab_table = pq.read_table(dataset_dir / doc["vocab_file"]).sort_by(
        [("field", "ascending"), ("id", "ascending")]
    )
    vocab = {}
    fields = vocab_table.column("field").to_numpy(zero_copy_only=False)
    values = vocab_table.column("value")
    for name in dict.fromkeys(fields.tolist()):
        vocab[name] = values.filter(pa.array(fields == name)).combine_chunks()
    owners = plan.sparse + [m.name for m in plan.multi if not m.shares_vocab_with]
    for name in owners:
        if not plan.buckets(name):
            vocab.setdefault(name, pa.array([], pa.string()))
    fitted = Fitted(vocab, {}, doc["dense"], 0)
    return spec, plan, fitted


def _blocks(rows: Any, plan: Plan, columns: list[str]):
    from mtlrec.data.prepare.reading import Block, header_columns, iter_blocks

    if isinstance(rows, (str, Path)):
        path = Path(rows).expanduser()
        if not path.is_file():
            raise MtlrecError(f"{path}: raw input file not found")
        plan.sources = [RawSource(path, split="test")]
        have = header_columns(path, plan.read)
        wanted = columns + [c for c in plan.labels if c in have and c not in columns]
        return list(iter_blocks(plan, 0, wanted)), all(c in have for c in plan.labels)
    if not isinstance(rows, pa.Table):
        import pandas as pd

        if not isinstance(rows, pd.DataFrame):
            raise MtlrecError(
                f"encode_raw: rows must be a file path, a pandas DataFrame or an arrow Table, not {type(rows).__name__}"
            )
        rows = pa.Table.from_pandas(rows, preserve_index=False)
    plan.sources = [RawSource(Path("raw rows"), split="test")]
    missing = [c for c in columns if c not in rows.column_names]
    if missing:
        raise MtlrecError(
            f"raw rows: column(s) {missing} not found; they have {rows.column_names[:12]}"
        )
    return [Block(rows, 0, 0, 1)], all(c in rows.column_names for c in plan.labels)


def encode_raw(rows: Any, dataset_dir: str | Path) -> tuple[torch.Tensor, torch.Tensor, RawReport]:
    """(sparse int64 [N, C], dense float32 [N, E], report) of raw rows, laid out as the loader's."""
    from mtlrec.data.loader import encode_columns
    from mtlrec.data.prepare.encoding import SplitSummary, _summarize, encode_block

    dataset_dir = Path(dataset_dir).expanduser()
    spec, plan, fitted = _load(dataset_dir)
    columns = plan.sparse + plan.multi_names + plan.dense
    blocks, with_labels = _blocks(rows, plan, columns)
    summary = SplitSummary()
    plan.targets = plan.targets if with_labels else []
    parts = []
    for block in blocks:
        encoded = encode_block(plan, fitted, block, labels=with_labels)
        parts.append(_summarize(plan, summary, encoded))
    table = pa.concat_tables(parts)
    features_only = replace(spec, labels=(), tasks=(), funnel=None)
    target = spec if with_labels else features_only
    sparse, dense, labels = encode_columns(
        dataset_dir / "raw rows",
        target,
        spec.tasks if with_labels else (),
        table.column,
        table.num_rows,
    )
    report = RawReport(
        rows=table.num_rows,
        oov=dict(summary.oov),
        truncated=dict(summary.truncated),
        labels=torch.from_numpy(labels) if with_labels else None,
    )
    return torch.from_numpy(sparse), torch.from_numpy(dense), report


__all__ = ["ENCODERS_FILE", "RawReport", "encode_raw", "write_encoders"]
