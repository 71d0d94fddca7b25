"""Streamed training splits under data parallelism (`streaming=enabled`): rank r reads only
the parquet row groups r, r+W, r+2W, ... of the train file."""

from __future__ import annotations

import logging
from collections.abc import Generator, Iterator
from typing import Any, cast

import torch

from mtlrec.data.streaming import StreamingSplit
from mtlrec.errors import MtlrecError
from mtlrec.training.distributed.context import current

log = logging.getLogger(__name__)


class RankStream(StreamingSplit):
    """Rank r's share of a streamed training split: the row groups r, r+W, r+2W, ... of the file.

    Every rank reads only its own groups (in a generator-drawn order each epoch, then shuffled
    in the split's buffer as in one process). DDP needs the same number of steps on every rank,
    and the ranks' groups hold different numbers of rows, so an epoch has
    steps = min over ranks of floor(rows of the rank / b) full batches of b rows per rank; each
    rank's remaining rows (fewer than one row group + b) wait for a later epoch, whose group order
    and buffer shuffle put other rows last.
    """

    def __init__(self, split: StreamingSplit, batch_size: int, rank: int, world: int):
        import pyarrow.parquet as pq

        self.__dict__.update(split.__dict__)  # the same file and settings (not re-validated)
        meta = pq.ParquetFile(split.path).metadata
        if split.num_row_groups < world:
            raise MtlrecError(
                f"{split.path}: streaming=enabled with {world} ranks needs at least {world} "
                f"parquet row groups (ranks read different ones), the file has "
                f"{split.num_row_groups}; rewrite it with smaller row groups or set "
                "streaming=disabled"
            )
        group_rows = [meta.row_group(g).num_rows for g in range(split.num_row_groups)]
        rows = [sum(group_rows[r::world]) for r in range(world)]
        self.steps = min(rows) // batch_size
        if self.steps == 0:
            raise MtlrecError(
                f"{split.path}: with {world} ranks a rank streams only {min(rows)} rows, less "
                f"than one batch of trainer.batch_size={batch_size}; lower the batch size or set "
                "streaming=disabled"
            )
        self.rank, self.world, self.batch_size = rank, world, batch_size
        self.groups = list(range(rank, split.num_row_groups, world))
        self.rows_per_rank = rows

    def __len__(self) -> int:
        """Rows trained per epoch over all ranks (steps x b x W)."""
        return self.steps * self.batch_size * self.world

    def batches(self, global_batch: int, generator: torch.Generator) -> Iterator[Any]:
        """This rank's `steps` batches of b = global_batch / W rows."""
        b = global_batch // self.world
        order = [self.groups[i] for i in torch.randperm(len(self.groups), generator=generator)]
        held, rows, done = [], 0, 0
        chunks = cast(Generator, self.chunks(order))  # a generator: closed in `finally`
        try:
            for chunk in chunks:
                held.append(chunk)
                rows += chunk[0].shape[0]
                if rows < self.shuffle_buffer + b:
                    continue
                flush = self._flush(held, b, generator, final=False)
                while True:
                    try:
                        batch = next(flush)
                    except StopIteration as stop:
                        held, rows = stop.value
                        break
                    yield batch
                    done += 1
                    if done == self.steps:
                        return
            for batch in self._flush(held, b, generator, final=True):
                if batch.labels.shape[0] < b or done == self.steps:
                    return
                yield batch
                done += 1
        finally:
            chunks.close()  # stops the reader thread when the epoch ends before the file does


def shard_streaming(splits: dict[str, Any], batch_size: int) -> dict[str, Any]:
    """With several ranks, a streamed train split becomes this rank's RankStream."""
    ctx = current()
    train = splits.get("train")
    if ctx.world_size == 1 or not isinstance(train, StreamingSplit):
        return splits
    stream = RankStream(train, batch_size, ctx.rank, ctx.world_size)
    log.info(
        "data: rank %d streams row groups %s... (%s rows); %d steps of %d rows per rank and epoch",
        ctx.rank,
        stream.groups[:4],
        f"{stream.rows_per_rank[ctx.rank]:,}",
        stream.steps,
        batch_size,
    )
    return {**splits, "train": stream}
