"""Feature hashing: a value's id is a stable 64-bit hash of its UTF-8 bytes, no vocabulary pass.

    id = 1 + (splitmix64(fnv1a64(utf8(value))) mod N)        (id 0 stays the field's OOV id)

FNV-1a is computed for all values at once, one byte position at a time (a loop over the longest
value's length, never over rows), so it is the same on every machine and in every process (unlike
Python's salted `hash()`). Collisions are estimated from the train rows' bucket occupancy: with D
distinct values in N buckets, K = N (1 - (1 - 1/N)^D) buckets are expected to be taken, so
D ~ log(1 - K/N) / log(1 - 1/N), and D - K values share a bucket with another value.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

_FNV_OFFSET = np.uint64(0xCBF29CE484222325)
_FNV_PRIME = np.uint64(0x100000001B3)


def stable_hash(values: pa.Array) -> np.ndarray:
    """uint64 hashes of a string array (null counts as '')."""
    arr = pc.fill_null(pc.cast(values, pa.large_string()), "")
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    n = len(arr)
    _, offsets_buf, data_buf = arr.buffers()
    offsets = np.frombuffer(offsets_buf, dtype=np.int64)[arr.offset : arr.offset + n + 1]
    data = (
        np.frombuffer(data_buf, dtype=np.uint8) if data_buf is not None else np.zeros(0, np.uint8)
    )
    lengths = np.diff(offsets)
    h = np.full(n, _FNV_OFFSET, dtype=np.uint64)
    starts = offsets[:-1]
    for j in range(int(lengths.max(initial=0))):
        live = np.flatnonzero(lengths > j)
        h[live] = (h[live] ^ data[starts[live] + j].astype(np.uint64)) * _FNV_PRIME
    # splitmix64's finalizer: FNV's low bits are weak, and `mod N` reads exactly those.
    h ^= h >> np.uint64(30)
    h *= np.uint64(0xBF58476D1CE4E5B9)
    h ^= h >> np.uint64(27)
    h *= np.uint64(0x94D049BB133111EB)
    h ^= h >> np.uint64(31)
    return h


def hashed_ids(values: pa.Array, buckets: int) -> np.ndarray:
    """int32 ids in [1, buckets]."""
    return (stable_hash(values) % np.uint64(buckets)).astype(np.int32) + 1


@dataclass
class Occupancy:
    """Which buckets the train values took (N booleans: bounded memory, whatever the data)."""

    buckets: int
    taken: np.ndarray | None = None

    def add(self, ids: np.ndarray) -> None:
        if self.taken is None:
            self.taken = np.zeros(self.buckets + 1, dtype=bool)
        self.taken[ids] = True

    def estimate(self) -> dict[str, float | int | None]:
        """Taken buckets, estimated distinct values and values estimated to share a bucket."""
        n = self.buckets
        k = int(self.taken.sum()) if self.taken is not None else 0
        if k >= n:
            distinct = math.inf
        elif n == 1:
            distinct = float(k)
        else:
            distinct = math.log1p(-k / n) / math.log1p(-1 / n)
        colliding = distinct - k
        return {
            "buckets": n,
            "taken": k,
            "estimated_distinct": round(distinct, 1) if math.isfinite(distinct) else None,
            "estimated_colliding_values": round(colliding, 1) if math.isfinite(colliding) else None,
        }
