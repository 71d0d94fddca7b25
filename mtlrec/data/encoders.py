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
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
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
    if not path.is_file() and spec.info.get("generator"):
        raise MtlrecError(
            f"{dataset_dir}: dataset '{spec.name}' is generated in code ({spec.info['generator']}) and has no raw form to encode; score its prepared parquet rows instead"
        )
    if not path.is_file():
        raise MtlrecError(
            f"{path}: no encoders (the dataset was prepared before they were kept); prepare it again with overwrite=true"
        )
    try:
        doc = json.loads(path.read_text())
        if not doc.get("replayable", False):
            raise MtlrecError(
                f"{dataset_dir}: dataset '{spec.name}' (preparer {doc.get('preparer')}) derives its columns in code, so raw rows cannot be encoded with its encoders; score its prepared parquet rows instead"
            )
        plan = _plan(doc, spec, dataset_dir)
        vocab_path, dense = dataset_dir / str(doc["vocab_file"]), dict(doc["dense"])
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AttributeError) as e:
        raise MtlrecError(
            f"{path}: malformed encoders ({type(e).__name__}: {e}); prepare the dataset again with overwrite=true"
        ) from None
    try:
        vocab = _vocabularies(vocab_path, plan)
    except (OSError, pa.ArrowException, KeyError) as e:
        raise MtlrecError(
            f"{vocab_path}: cannot read the vocabularies ({type(e).__name__}); prepare the dataset again with overwrite=true"
        ) from None
    return spec, plan, Fitted(vocab, {}, dense, 0)


def _plan(doc: dict, spec: DatasetSpec, dataset_dir: Path) -> Plan:
    """The encoding part of prepare's plan, rebuilt from encoders.json."""
    read = dict(doc["read"])
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
        sample_weight=spec.sample_weight,
        multi=[MultiField(**m) for m in doc["multi"]],
        hash_buckets=dict(doc["hash_buckets"]),
        label_maps={
            c: LabelMap(tuple(m["positive"]), tuple(m["negative"]) if m["negative"] else None)
            for c, m in doc["label_maps"].items()
        },
    )
    plan.transforms = {c: p["transform"] for c, p in doc["dense"].items()}
    plan.fills = {c: p["fill"] for c, p in doc["dense"].items()}
    return plan


def _vocabularies(path: Path, plan: Plan) -> dict[str, pa.Array]:
    """field -> its values in id order (id = position + 1; 0 is the OOV id)."""
    vocab_table = pq.read_table(path).sort_by([("field", "ascending"), ("id", "ascending")])
    vocab = {}
    fields = vocab_table.column("field").to_numpy(zero_copy_only=False)
    values = vocab_table.column("value")
    for name in dict.fromkeys(fields.tolist()):
        vocab[name] = values.filter(pa.array(fields == name)).combine_chunks()
    owners = plan.sparse + [m.name for m in plan.multi if not m.shares_vocab_with]
    for name in owners:
        if not plan.buckets(name):
            vocab.setdefault(name, pa.array([], pa.string()))
    return vocab


@dataclass
class RawEncoder:
    """A dataset's encoders, loaded once, applied to raw blocks as they stream in (predict)."""

    dataset_dir: Path
    spec: DatasetSpec
    plan: Plan
    fitted: Any
    summary: Any = None  # prepare's SplitSummary of every block encoded so far

    @classmethod
    def load(cls, dataset_dir: str | Path) -> RawEncoder:
        from mtlrec.data.prepare.encoding import SplitSummary

        path = Path(dataset_dir).expanduser()
        spec, plan, fitted = _load(path)
        return cls(path, spec, plan, fitted, SplitSummary())

    @property
    def columns(self) -> list[str]:
        """The raw columns the encoders read (a built history: its user, time and item columns)."""
        raw_multi = [m.name for m in self.plan.multi if not m.built]
        cols = self.plan.sparse + raw_multi + self.plan.dense + self.plan.log_columns()
        return list(dict.fromkeys(cols))

    def file_blocks(self, path: Path, extra: Sequence[str] = ()) -> Iterator[Any]:
        """Blocks of the raw file `path` (the encoders' columns plus `extra`), read as prepare did.

        Histories built from the log are built from the file's own events, as prepare built them
        from its files: one pass over the file's user, time and item columns first."""
        from mtlrec.data.prepare.reading import iter_blocks
        from mtlrec.data.prepare.timeline import build_timeline

        if not path.is_file():
            raise MtlrecError(f"{path}: raw input file not found")
        self.plan.sources = [RawSource(path, split="test")]
        self.plan.timeline = build_timeline(self.plan) if self.plan.built else None
        return iter_blocks(self.plan, 0, list(dict.fromkeys([*self.columns, *extra])))

    def encode(self, block: Any, labels: bool = False) -> tuple[np.ndarray, np.ndarray, Any]:
        """(sparse [n, C] fused ids, dense [n, E], labels or None) of one raw block."""
        from mtlrec.data.loader import encode_columns
        from mtlrec.data.prepare.encoding import _summarize, encode_block

        plan = replace(self.plan, targets=self.plan.targets if labels else [])
        encoded = _summarize(plan, self.summary, encode_block(plan, self.fitted, block, labels))
        spec = self.spec if labels else replace(self.spec, labels=(), tasks=(), funnel=None)
        sparse, dense, y = encode_columns(
            self.dataset_dir / "raw rows",
            spec,
            spec.tasks,
            encoded.column,
            encoded.num_rows,
            log_oov=False,
        )
        return sparse, dense, y if labels else None

    def report(self) -> RawReport:
        hashed = {c for c in self.plan.sparse if self.plan.buckets(c)}
        return RawReport(
            rows=self.summary.rows,
            oov={k: v for k, v in self.summary.oov.items() if k not in hashed},
            truncated=dict(self.summary.truncated),
        )


def _blocks(rows: Any, encoder: RawEncoder) -> tuple[list, bool]:
    from mtlrec.data.prepare.reading import Block, header_columns

    plan, columns = encoder.plan, encoder.columns
    if isinstance(rows, (str, Path)):
        path = Path(rows).expanduser()
        if not path.is_file():
            raise MtlrecError(f"{path}: raw input file not found")
        have = header_columns(path, plan.read)
        labels = [c for c in plan.labels if c in have]
        return list(encoder.file_blocks(path, labels)), all(c in have for c in plan.labels)
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
    block = Block(rows, 0, 0, 1)
    if plan.built:  # the histories, built from the rows' own events
        from mtlrec.data.prepare.timeline import timeline_for_table

        plan.timeline = timeline_for_table(plan, rows)
    return [block], all(c in rows.column_names for c in plan.labels)


def encode_raw(rows: Any, dataset_dir: str | Path) -> tuple[torch.Tensor, torch.Tensor, RawReport]:
    """(sparse int64 [N, C], dense float32 [N, E], report) of raw rows, laid out as the loader's."""
    encoder = RawEncoder.load(dataset_dir)
    blocks, with_labels = _blocks(rows, encoder)
    parts = [encoder.encode(block, labels=with_labels) for block in blocks]
    report = encoder.report()
    report.oov = dict(encoder.summary.oov)  # every sparse field, as prepare's summary counts
    if with_labels:
        report.labels = torch.from_numpy(np.concatenate([p[2] for p in parts]))
    sparse = np.concatenate([p[0] for p in parts])
    dense = np.concatenate([p[1] for p in parts])
    return torch.from_numpy(sparse), torch.from_numpy(dense), report


__all__ = ["ENCODERS_FILE", "RawEncoder", "RawReport", "encode_raw", "write_encoders"]
