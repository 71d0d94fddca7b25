"""The first values of a TorchRec layer's shards: each rank writes only the shards it holds.

A model for the torchrec backend is built inside `seeded_init.drawn_in_shards()` (experiment.py):
its seeded tables (models/seeded_init.py: SEEDED_FROM_ROWS rows and more) are meta tensors that
carry their SeededInit, so no rank ever allocates or draws a whole one. `write_initial` then
fills each shard a rank holds (a table_wise table on its rank, a column_wise shard's columns, a
row_wise shard's rows, a data-parallel replica whole) with `SeededInit.draw_part`: only the
chunks of rows the shard covers, a chunk at a time, so a rank's memory is its shards plus one
chunk per drawing thread. The values are the bits a whole draw gives. A smaller table (drawn
from the global generator as ever, whole: it is small) and a table built normally (a test, an
init_from run) are copied in slices as before; a meta table without an init (built to be loaded
from a checkpoint next) is left to the restore.
"""

from __future__ import annotations

from typing import Any

import torch

from mtlrec.models.seeded_init import (
    SeededInit,
    fingerprint_rows,
    sample_fingerprint,
)
from mtlrec.models.torchrec_embedding import TorchRecFieldEmbedding

Piece = tuple[list[int], torch.Tensor]  # (offsets in the table, this rank's tensor)


def local_pieces(state: Any) -> list[Piece]:
    """The parts of a table this rank holds: a ShardedTensor's local shards (their own storage),
    or a replica (data_parallel) whole."""
    if hasattr(state, "local_shards"):
        return [(list(s.metadata.shard_offsets), s.tensor) for s in state.local_shards()]
    return [([0] * state.dim(), state)]


def part_of(value: torch.Tensor, offsets: list[int], piece: torch.Tensor) -> torch.Tensor:
    """The part of a whole `value` that `piece`, at `offsets`, holds (a view)."""
    return value[tuple(slice(a, a + n) for a, n in zip(offsets, piece.shape, strict=True))]


@torch.no_grad()
def copy_into(state: Any, value: torch.Tensor) -> None:
    """Each piece of `state` this rank holds takes its part of the whole `value`."""
    if tuple(state.size()) != tuple(value.shape):  # a slice would cut a larger value silently
        raise RuntimeError(f"a value of {list(value.shape)} for a table of {list(state.size())}")
    for offsets, piece in local_pieces(state):
        piece.copy_(part_of(value, offsets, piece))


@torch.no_grad()
def write_initial(states: list[Any], layer: TorchRecFieldEmbedding, one_process: bool) -> None:
    """Fill the shards `states` (torchrec_backend.table_states) of `layer` with its initial
    weights, then drop them. `one_process`: the rank holds every piece, so a drawn table's
    fingerprint (which table_files checks) is taken from its pieces."""
    for j, (state, weight) in enumerate(zip(states, layer.initial_weights, strict=True)):
        shape, pieces = list(weight.shape), local_pieces(state)
        init = layer.initial_draws[j] if weight.is_meta else None
        if not weight.is_meta:  # values (a small table, a test, init_from): copied
            copy_into(state, weight)
        elif init is not None:
            for (row, col), piece in pieces:
                init.draw_part(shape, row, col, piece, dtype=weight.dtype)
        if init is not None and one_process:
            digest = sample_fingerprint(shape, weight.dtype, _sample(shape, weight.dtype, pieces))
            layer.initial_seeds[j] = SeededInit(init.seed, init.std, digest, init.chunk_rows)
    layer.initial_weights, layer.initial_draws = [], []


def _sample(shape: list[int], dtype: torch.dtype, pieces: list[Piece]) -> torch.Tensor:
    """The rows `fingerprint` hashes, put together from `pieces` that cover the table."""
    rows = fingerprint_rows(shape[0])
    sample = torch.empty([len(rows), *shape[1:]], dtype=dtype)
    for (row, col), piece in pieces:
        inside = (rows >= row) & (rows < row + piece.shape[0])
        picked = piece.index_select(0, (rows[inside] - row).to(piece.device)).cpu()
        sample[inside, col : col + piece.shape[1]] = picked.to(sample.dtype)
    return sample
