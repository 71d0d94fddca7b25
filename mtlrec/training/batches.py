"""Where training rows live and how an epoch becomes batches: in memory, pinned, or streamed.

- In memory: a split is whole-split tensors on the device (or in pinned host memory when it does
  not fit the GPU comfortably); a batch is an index slice of them, never a per-row collate.
- Streaming (`streaming=enabled`): the train split is read from parquet in bounded memory
  by `StreamingSplit`, which shuffles inside its reader.

`trainer.tail_batch` decides what happens to the last short batch of an epoch: `merge` (default)
adds its rows to the batch before it, so every row trains and no batch of one row reaches batch
norm ("Expected more than 1 value per channel"); `drop` leaves those rows out of that epoch;
`keep` trains the short batch on its own (what runs did before the setting existed: a resumed
run whose saved config has no `trainer.tail_batch` continues that way, exactly).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mtlrec.data.loader import Batch, SplitTensors, load_splits
from mtlrec.data.sources.base import DatasetConfig
from mtlrec.data.spec import DatasetSpec
from mtlrec.data.streaming import StreamingConfig, StreamingSplit
from mtlrec.errors import MtlrecError
from mtlrec.training import distributed

log = logging.getLogger("mtlrec")


def place_splits(splits: dict, device: torch.device, on_device: str | bool = "auto") -> dict:
    """Move whole splits to the GPU when they fit comfortably (or trainer.data_on_device=true);
    else pin them in host memory for async copies (or trainer.data_on_device=false)."""
    if device.type != "cuda":
        return splits
    total = sum(s.nbytes for s in splits.values())
    free, _ = torch.cuda.mem_get_info(device)
    if on_device is True or (on_device == "auto" and total < 0.5 * free):
        log.info("data: %.1f MiB moved to %s once", total / 2**20, device)
        return {k: s.to(device) for k, s in splits.items()}
    log.info(
        "data: %.1f MiB stays in pinned host memory (GPU has %.1f MiB free)",
        total / 2**20,
        free / 2**20,
    )
    return {k: s.pin_memory() for k, s in splits.items()}


def load_data(
    ds: DatasetConfig,
    data_dir: Path,
    spec: DatasetSpec,
    tasks: tuple,
    device: torch.device,
    on_device: str | bool = "auto",
    streaming: StreamingConfig | None = None,
):
    """Splits ready for the trainer; with streaming=enabled the train split is streamed."""
    violations = ds.funnel_violations  # dataset.funnel_violations: error | drop
    streaming = streaming or StreamingConfig()
    if not streaming.enabled:
        return place_splits(
            load_splits(data_dir, spec, tasks, funnel_violations=violations), device, on_device
        )
    if "train" not in spec.splits:
        raise MtlrecError(f"{data_dir / 'spec.json'}: no 'train' split to stream")
    train = StreamingSplit(
        data_dir / spec.splits["train"],
        spec,
        tasks,
        shuffle_buffer=streaming.shuffle_buffer,
        prefetch=streaming.prefetch,
        read_rows=streaming.read_rows,
        funnel_violations=violations,
        decode_threads=streaming.decode_threads,
    )
    log.info(
        "data: train streamed from %s (%s rows, %d row groups; shuffle buffer %s rows)",
        train.path,
        f"{len(train):,}",
        train.num_row_groups,
        f"{train.shuffle_buffer:,}",
    )
    rest = load_splits(data_dir, spec, tasks, ("val", "test"), funnel_violations=violations)
    return {"train": train, **place_splits(rest, device, on_device)}


def gather(split: SplitTensors, idx: torch.Tensor, on_device: bool) -> Batch:
    """Rows `idx` of a split; index_select is several times faster than split[idx] on CPU.

    From pinned host memory (a split too large for the GPU) the rows land in pinned buffers, so
    the non_blocking copy to the GPU that follows is truly asynchronous (torch's caching host
    allocator keeps a buffer alive until its copy is done).
    """
    tensors = (split.sparse, split.dense, split.labels)
    idx = idx if on_device else idx.cpu()
    if on_device or not split.labels.is_pinned():
        return Batch(*(t.index_select(0, idx) for t in tensors))
    out = []
    for t in tensors:
        buf = torch.empty((idx.numel(), *t.shape[1:]), dtype=t.dtype, pin_memory=True)
        out.append(torch.index_select(t, 0, idx, out=buf))
    return Batch(*out)


@dataclass(frozen=True)
class EpochPlan:
    """How many steps an epoch of `rows` rows takes in global batches of `batch_size` rows."""

    rows: int
    batch_size: int
    tail: str = "merge"  # trainer.tail_batch: merge | drop | keep

    @property
    def has_tail(self) -> bool:
        """A short last batch that merge/drop handle (`keep`: it trains on its own)."""
        return (
            self.tail != "keep" and self.rows > self.batch_size and self.rows % self.batch_size != 0
        )

    @property
    def steps(self) -> int:
        raw = max(math.ceil(self.rows / self.batch_size), 1)
        return raw - 1 if self.has_tail else raw

    @property
    def trained_rows(self) -> int:
        """Rows an epoch trains on (drop leaves the tail out)."""
        if self.has_tail and self.tail == "drop":
            return self.steps * self.batch_size
        return self.rows

    def bounds(self, step: int) -> tuple[int, int]:
        """Positions [start, stop) of the epoch's order that step `step` trains on."""
        start = step * self.batch_size
        last = step == self.steps - 1
        if last and self.has_tail and self.tail == "merge":
            return start, self.rows
        return start, min(start + self.batch_size, self.rows)


def merge_tail(batches: Iterator[Batch], plan: EpochPlan) -> Iterator[Batch]:
    """A streamed epoch's batches per `plan`: the short last batch merged or dropped."""
    for k, batch in enumerate(batches):
        if k < plan.steps - 1 or not plan.has_tail:
            yield batch
        elif k == plan.steps - 1:
            held = batch  # the last full batch: its tail follows
        elif plan.tail == "merge":
            yield Batch(*(torch.cat(p) for p in zip(_parts(held), _parts(batch), strict=True)))
        else:
            yield held


def _parts(batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return batch.sparse, batch.dense, batch.labels


def epoch_batches(
    train: Any,
    plan: EpochPlan,
    order: torch.Tensor,
    first_step: int,
    on_device: bool,
    generator: torch.Generator,
) -> Iterator[Batch]:
    """The batches of steps first_step.. of an epoch (`order`: the epoch's row permutation).

    A streamed epoch draws its order from `generator` inside the reader (the caller set it to the
    epoch's starting state); on resume the batches already trained are read and skipped.
    """
    if isinstance(train, StreamingSplit):
        stream = merge_tail(train.batches(plan.batch_size, generator), plan)
        for k, batch in enumerate(stream):
            if k >= first_step:
                yield batch
        return
    for step in range(first_step, plan.steps):
        start, stop = plan.bounds(step)
        yield gather(train, distributed.shard(order[start:stop]), on_device)


def to_device(batch: Batch, device: torch.device) -> Batch:
    return Batch(*(t.to(device, non_blocking=True) for t in _parts(batch)))
