"""Shared pieces of the embedded generators (synthetic_ccp, mmoe_synthetic): rows are made and
written chunk by chunk, so memory is bounded by the chunk size, not by the number of rows."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from mtlrec.data.spec import DatasetSpec

SPLIT_NAMES = ("train", "val", "test")


def split_sizes(num_rows: int, fractions: Mapping[str, float]) -> tuple[int, int, int]:
    """Exact (train, val, test) row counts: round(n * train), round(n * val), the rest."""
    n_train = int(round(num_rows * fractions["train"]))
    n_val = int(round(num_rows * fractions["val"]))
    return n_train, n_val, num_rows - n_train - n_val


class SequentialSplit:
    """Split codes (0 train, 1 val, 2 test) for consecutive chunks of rows, with exact split sizes.

    Every assignment of the sizes is equally likely, as with a global permutation, but chunk by
    chunk: how many of a chunk's rows go to each split is hypergeometric given what is left,
    then which rows is a permutation of the chunk (Knuth's selection sampling, vectorized).
    """

    def __init__(self, sizes: tuple[int, int, int], rng: np.random.Generator):
        self.left = list(sizes)
        self.rng = rng

    def codes(self, rows: int) -> np.ndarray:
        train, val, test = self.left
        k_train = int(self.rng.hypergeometric(train, val + test, rows)) if train else 0
        rest = rows - k_train
        k_val = (
            int(self.rng.hypergeometric(val, test, rest)) if val and test else (rest if val else 0)
        )
        codes = np.full(rows, 2, dtype=np.int8)
        perm = self.rng.permutation(rows)
        codes[perm[:k_train]] = 0
        codes[perm[k_train : k_train + k_val]] = 1
        self.left = [train - k_train, val - k_val, test - (rest - k_val)]
        return codes


class SplitWriter:
    """One parquet writer per split; rows keep their generated order within a split."""

    def __init__(self, directory: Path, spec: DatasetSpec):
        self.directory, self.spec = Path(directory), spec
        self.writers: dict[str, pq.ParquetWriter] = {}

    def write(self, columns: Mapping[str, np.ndarray], codes: np.ndarray) -> None:
        table = pa.table(dict(columns))
        for k, split in enumerate(SPLIT_NAMES):
            mask = codes == k
            if not mask.any():
                continue
            part = table.filter(pa.array(mask))
            if split not in self.writers:
                path = self.directory / self.spec.splits[split]
                self.writers[split] = pq.ParquetWriter(path, part.schema)
            self.writers[split].write_table(part)

    def close(self) -> None:
        for w in self.writers.values():
            w.close()
        self.writers = {}

    def __enter__(self) -> SplitWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
