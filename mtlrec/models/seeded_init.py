"""Big embedding tables drawn from their own generator, so a checkpoint need not store their init.

An embedding table of at least SEEDED_FROM_ROWS rows is initialised uniform(-a, a) with
a = sqrt(3) * std (the variance of N(0, std^2), what smaller tables are drawn from), from a
torch.Generator of its own whose seed is drawn from the global generator (the run's `seed` fixes
it). The values are made without transcendental functions: 24-bit integers from torch.randint
(the generator's integer stream), shifted to [-2^23, 2^23) (exact in float32) and multiplied by
a / 2^23 once (one IEEE rounding). So `SeededInit.draw` gives the same bits on any CPU or
thread count, with any torch whose CPU generator draws the same integers (`fingerprint` checks
it), and the table's initial weights are a function of (seed, shape, std): a
checkpoint's table files (mtlrec/training/table_files.py) store that instead of the 1.28 GB of a
20M-row table, plus the rows changed since. `fingerprint` (SHA-256 of a fixed sample of rows) is
taken when the table is drawn and checked when it is drawn again. Each chunk of CHUNK_ROWS rows
has a generator of its own, so `draw_rows` draws some rows again without the rest of the table.

A model whose every weight a checkpoint sets right after it is built (resume, evaluate,
predict, export: the checkpoint is read first, the model built from it) is built inside
`loaded_next()`: its seeded tables are allocated, not drawn. Reading a checkpoint whose tables
start at their seeded init then draws each table once (table_files.assemble), not twice.

The TorchRec backend builds its model inside `drawn_in_shards()`: a seeded table is a meta
tensor carrying its SeededInit (`deferred_init_of`), and each rank fills only the shards it
holds with `SeededInit.draw_part` (training/torchrec_init.py): no rank allocates the whole table.

Smaller tables keep N(0, std^2) from the global generator, drawn as before: their numbers for a
given seed are unchanged.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

SEEDED_FROM_ROWS = 100_000  # the default checkpoint.table_files_min_rows
FINGERPRINT_ROWS = 64
CHUNK_ROWS = 1 << 16  # rows drawn at a time: the integer temporary stays small
_HALF = 1 << 23
_ATTRIBUTE = "mtlrec_seeded_init"
_DEFERRED_ATTRIBUTE = "mtlrec_seeded_deferred"
_LOADED_NEXT: ContextVar[bool] = ContextVar("mtlrec_seeded_loaded_next", default=False)
_DEFERRED: ContextVar[bool] = ContextVar("mtlrec_seeded_deferred", default=False)


@dataclass(frozen=True)
class SeededInit:
    """How a big table was initialised: its seed, the std, its fingerprint, and the rows drawn
    per generator (chunk c of `chunk_rows` rows from a generator seeded by (seed, c), so the
    rows of one chunk can be drawn again without the rows before them)."""

    seed: int
    std: float
    fingerprint: str
    chunk_rows: int = CHUNK_ROWS

    @torch.no_grad()
    def _draw_chunk(self, chunk: int, out: torch.Tensor) -> None:
        generator = torch.Generator().manual_seed(_chunk_seed(self.seed, chunk))
        # randint(low, high) is low + (a 32-bit draw mod (high - low)): the same integers as
        # randint(0, 2^24) - 2^23 (the format's definition) without a pass to subtract
        ints = torch.randint(-_HALF, _HALF, out.shape, generator=generator, dtype=torch.int32)
        scale = torch.tensor(math.sqrt(3.0) * self.std / _HALF, dtype=out.dtype)
        torch.mul(ints, scale, out=out)  # the exact int -> float cast, then one rounding

    def draw_into(self, weight: torch.Tensor, workers: int | None = None) -> None:
        """Fill `weight` (a CPU float tensor, rows first) with this init's values. The chunks
        are independent (a generator each, their own rows of `weight`), so `workers` threads
        (default torch.get_num_threads()) draw them at once: torch releases the GIL inside
        randint and mul. The bits do not depend on the number of threads."""
        chunks = list(enumerate(weight.split(self.chunk_rows)))
        _on_threads(lambda item: self._draw_chunk(*item), chunks, workers)

    def draw(self, shape: list[int], dtype: torch.dtype = torch.float32) -> torch.Tensor:
        weight = torch.empty(shape, dtype=dtype)
        self.draw_into(weight)
        return weight

    def draw_rows(
        self, shape: list[int], rows: torch.Tensor, dtype: torch.dtype = torch.float32
    ) -> torch.Tensor:
        """The values of `rows` (ids, any order) of the table `draw(shape)` gives, drawing only
        the chunks that hold them: O(chunks touched x chunk_rows), not O(table)."""
        out = torch.empty([len(rows), *shape[1:]], dtype=dtype)
        chunk_of = rows // self.chunk_rows
        for chunk in chunk_of.unique().tolist():
            first = chunk * self.chunk_rows
            block = torch.empty([min(self.chunk_rows, shape[0] - first), *shape[1:]], dtype=dtype)
            self._draw_chunk(chunk, block)
            where = (chunk_of == chunk).nonzero().squeeze(1)
            out[where] = block[rows[where] - first]
        return out

    def draw_part(
        self,
        shape: list[int],
        first_row: int,
        first_col: int,
        out: torch.Tensor,
        dtype: torch.dtype = torch.float32,
        workers: int | None = None,
    ) -> None:
        """Fill `out` (any device) with the block of `draw(shape)` whose corner is (first_row,
        first_col) and whose size is out's: a shard of the table. Only the chunks holding its
        rows are drawn, one at a time per worker thread: a chunk's integers run over whole rows,
        so each is drawn in full width and its columns kept. Memory O(out + one chunk per
        worker), never the table; the bits are draw's (the same chunk shapes and generators)."""
        rows_end, cols = first_row + out.shape[0], slice(first_col, first_col + out.shape[1])
        chunks = range(first_row // self.chunk_rows, -(-rows_end // self.chunk_rows))

        def one(chunk: int) -> None:
            start = chunk * self.chunk_rows
            stop = min(start + self.chunk_rows, shape[0])
            block = torch.empty([stop - start, *shape[1:]], dtype=dtype)
            self._draw_chunk(chunk, block)
            low, high = max(start, first_row), min(stop, rows_end)
            out[low - first_row : high - first_row].copy_(block[low - start : high - start, cols])

        with torch.no_grad():
            _on_threads(one, list(chunks), workers)

    def to_dict(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "std": self.std,
            "fingerprint": self.fingerprint,
            "chunk_rows": self.chunk_rows,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SeededInit:
        return cls(int(d["seed"]), float(d["std"]), str(d["fingerprint"]), int(d["chunk_rows"]))


def _on_threads(work: Callable[[Any], None], items: list[Any], workers: int | None) -> None:
    """`work(item)` for every item, on `workers` threads (default torch.get_num_threads()); the
    items are independent chunks (a generator each, rows of their own)."""
    workers = min(len(items), workers or torch.get_num_threads())
    if workers <= 1:
        for item in items:
            work(item)
        return
    with ThreadPoolExecutor(workers, thread_name_prefix="seeded-init") as pool:
        list(pool.map(work, items))  # list(): wait for every chunk, raise the first error


def _chunk_seed(seed: int, chunk: int) -> int:
    """The generator seed of a chunk: (seed, chunk) mixed into 63 bits."""
    digest = hashlib.sha256(f"{seed}/{chunk}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def fingerprint(weight: torch.Tensor) -> str:
    """SHA-256 of FINGERPRINT_ROWS rows spread over the table (and its shape and dtype)."""
    sample = weight.detach().cpu().index_select(0, fingerprint_rows(weight.shape[0]))
    return sample_fingerprint(list(weight.shape), weight.dtype, sample)


def fingerprint_rows(n: int) -> torch.Tensor:
    """The rows `fingerprint` hashes of a table of `n` rows."""
    return torch.linspace(0, max(n - 1, 0), FINGERPRINT_ROWS).round().long().unique()


def sample_fingerprint(shape: list[int], dtype: torch.dtype, sample: torch.Tensor) -> str:
    """`fingerprint` of a table of `shape` and `dtype` whose `fingerprint_rows` are `sample`
    (a CPU tensor): for a table held in pieces (shards), its sample gathered from them."""
    h = hashlib.sha256(f"{shape}:{dtype}".encode())
    h.update(sample.contiguous().numpy().tobytes())
    return h.hexdigest()


def new_table(rows: int, dim: int, std: float) -> nn.Embedding:
    """An embedding table, initialised: seeded from SEEDED_FROM_ROWS rows (`seeded_init_of` its
    weight: the SeededInit), else N(0, std^2) from the global generator (after nn.Embedding's
    own draw, as ever)."""
    if rows < SEEDED_FROM_ROWS:
        table = nn.Embedding(rows, dim)
        nn.init.normal_(table.weight, std=std)
        return table
    # drawn once, here: nn.Embedding's own N(0, 1) draw of the whole table is skipped
    deferred = _DEFERRED.get()
    weight = torch.empty(rows, dim, device="meta") if deferred else torch.empty(rows, dim)
    table = nn.Embedding(rows, dim, _weight=weight)
    if table.weight.is_meta and not deferred:  # built for its shapes only (memory checks)
        return table
    # the seed is taken either way: the global generator draws the same numbers after it
    seed = int(torch.randint(0, 2**62, (), dtype=torch.int64))
    if _LOADED_NEXT.get():  # a checkpoint's weights are loaded into it next: nothing drawn
        return table
    if deferred:  # each rank draws its own shards of it (SeededInit.draw_part): no fingerprint
        setattr(table.weight, _DEFERRED_ATTRIBUTE, SeededInit(seed, std, ""))
        return table
    SeededInit(seed, std, "").draw_into(table.weight)
    # on the parameter itself: whoever holds the table (an optimizer) finds how it was drawn
    setattr(table.weight, _ATTRIBUTE, SeededInit(seed, std, fingerprint(table.weight)))
    return table


@contextmanager
def loaded_next(when: bool = True) -> Iterator[None]:
    """Inside it (`when`) `new_table` allocates a seeded table without drawing it (and without its
    SeededInit: it holds no init): for a model whose every weight a checkpoint's strict
    load_state_dict sets next. A drawn 20M-row table costs 1.2-3.1 s (docs/performance.md)."""
    token = _LOADED_NEXT.set(when)
    try:
        yield
    finally:
        _LOADED_NEXT.reset(token)


@contextmanager
def drawn_in_shards(when: bool = True) -> Iterator[None]:
    """Inside it (`when`) `new_table` makes a seeded table on the meta device (no memory), its
    seed taken as ever; `deferred_init_of` its weight gives the SeededInit whose `draw_part`
    fills each shard of it (training/torchrec_init.py), with no fingerprint: none of the
    drawn table exists. Inside `loaded_next()` too: meta, no init (a checkpoint sets it).
    For the TorchRec backend, whose tables are copied into their shards and never used whole."""
    token = _DEFERRED.set(when)
    try:
        yield
    finally:
        _DEFERRED.reset(token)


def deferred_init_of(weight: torch.Tensor) -> SeededInit | None:
    """How a table made inside `drawn_in_shards()` is to be drawn (None: not such a table)."""
    init = getattr(weight, _DEFERRED_ATTRIBUTE, None)
    return init if isinstance(init, SeededInit) else None


def seeded_init_of(weight: torch.Tensor) -> SeededInit | None:
    """How `new_table` drew this weight (None: not seeded). The weight may have changed since:
    the caller knows whether it still holds that init."""
    init = getattr(weight, _ATTRIBUTE, None)
    return init if isinstance(init, SeededInit) else None
