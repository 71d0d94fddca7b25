"""The vocabularies of a prepared dataset (vocab.parquet), read back as field -> values in id order.

A counted field's id i (1..V) is the value at position i - 1; id 0 is the field's OOV id and has
no value. Hashed fields have no vocabulary (their ids are a stable hash of the value). Used by
`dataset.vocab_from` (mtlrec.data.prepare.extend: old values keep their ids) and by
`init_from` across vocabularies (mtlrec.training.carry_rows: embedding rows by raw value).
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from mtlrec.data.prepare.manifest import verify_files
from mtlrec.data.prepare.plan import VOCAB_FILE
from mtlrec.errors import MtlrecError


def read_vocabularies(dataset_dir: Path) -> dict[str, list[str]]:
    """field -> its values, value of id i at position i - 1 (checked against checksums.json)."""
    path = Path(dataset_dir) / VOCAB_FILE
    if not path.is_file():
        raise MtlrecError(
            f"{path}: no vocabulary file; {dataset_dir} is not a dataset prepared by "
            "`mtlrec prepare` (generated datasets have none)"
        )
    verify_files(path.parent, [VOCAB_FILE])  # a damaged vocab.parquet: one line naming it
    try:
        table = pq.read_table(path).sort_by([("field", "ascending"), ("id", "ascending")])
        fields = table.column("field").to_pylist()
        values = table.column("value").to_pylist()
        ids = table.column("id").to_pylist()
    except (OSError, pa.ArrowException, KeyError) as e:
        raise MtlrecError(
            f"{path}: cannot read the vocabularies ({type(e).__name__}); prepare the dataset "
            "again with overwrite=true"
        ) from None
    out: dict[str, list[str]] = {}
    for name, value, i in zip(fields, values, ids, strict=True):
        vocab = out.setdefault(str(name), [])
        if i != len(vocab) + 1:  # ids 1..V without gaps: anything else is not prepare's file
            raise MtlrecError(f"{path}: field '{name}' has id {i} where {len(vocab) + 1} belongs")
        vocab.append(str(value))
    return out


def id_of(values: list[str]) -> dict[str, int]:
    """value -> id (1-based) of one field's vocabulary."""
    return {v: i + 1 for i, v in enumerate(values)}
