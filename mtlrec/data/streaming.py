"""`streaming=enabled`: the training split read from parquet while training, in bounded memory.

A background thread reads the file one parquet row group at a time (in a shuffled order), cuts it
into chunks of at most `read_rows` rows and converts them to tensors; a queue of at most `prefetch`
chunks sits between it and the training loop. The loop fills a shuffle buffer of `shuffle_buffer`
rows, permutes it, cuts full batches and carries the remainder (< one batch) into the next buffer.
Rows held at any time:

    peak rows ~ shuffle_buffer + batch_size + (prefetch + 2) * read_rows + row_group_rows

independent of the file's size (write prepared files with moderate row groups, e.g. 64k rows). Every row is seen exactly once per epoch and every batch but the
last of the epoch is full, so an epoch has ceil(rows / batch_size) steps as in memory.

Shuffling is block-wise (row-group order, then rows within the buffer), which is weaker than a
global permutation when the file is sorted; when `shuffle_buffer` holds the whole file, the epoch
order is `torch.randperm(rows, generator)`, exactly the in-memory order, so training is
bit-identical to `streaming=disabled` (tests/data/test_streaming.py checks this).
Validation and test splits stay in memory (they are scored as whole splits anyway).

Before the first batch the label columns are scanned once for funnel violations (a conversion
without a click, mtlrec.data.funnel): one error line with their counts, or, with
funnel_violations="drop", the epoch's row count without them. For its life the reader holds a
shared lock on the dataset dir, so `mtlrec prepare ... overwrite=true` refuses to replace the
files it reopens every epoch.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import queue
import threading
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import torch

from mtlrec.data import funnel
from mtlrec.data.loader import Batch, check_schema, encode_columns
from mtlrec.data.prepare.manifest import verified_read
from mtlrec.data.prepare.publish import hold_dataset
from mtlrec.data.spec import DatasetSpec, TaskSpec
from mtlrec.errors import MtlrecError

log = logging.getLogger(__name__)
_END = object()


def _column_of(table: pa.Table):
    return lambda name: table.column(name).to_numpy()


@dataclass
class StreamingConfig:
    """conf/streaming/*.yaml: `streaming=enabled` reads the train split from parquet while training."""

    enabled: bool = False
    shuffle_buffer: int = 262_144  # rows shuffled together
    prefetch: int = 4  # chunks read ahead by the reader thread
    read_rows: int = 65_536  # rows per chunk read from the file
    decode_threads: int = 1  # row groups read and decoded at once (keeps a fast GPU fed)

    def validate(self) -> None:
        for key in ("shuffle_buffer", "prefetch", "read_rows", "decode_threads"):
            if getattr(self, key) < 1:
                raise MtlrecError(
                    f"streaming.{key} must be an integer >= 1, got {getattr(self, key)}"
                )


class StreamingSplit:
    """A parquet split iterated as shuffled batches without loading it whole."""

    def __init__(
        self,
        path: str | Path,
        spec: DatasetSpec,
        tasks: tuple[TaskSpec, ...] = (),
        shuffle_buffer: int = 262_144,
        prefetch: int = 4,
        read_rows: int = 65_536,
        shuffle: bool = True,
        funnel_violations: str = "error",
        decode_threads: int = 1,
    ):
        for key, value in (
            ("shuffle_buffer", shuffle_buffer),
            ("prefetch", prefetch),
            ("read_rows", read_rows),
            ("decode_threads", decode_threads),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise MtlrecError(f"streaming.{key} must be an integer >= 1, got {value!r}")
        self.path, self.spec, self.tasks = Path(path), spec, tasks
        self.shuffle_buffer, self.prefetch, self.read_rows = shuffle_buffer, prefetch, read_rows
        self.shuffle, self.decode_threads = shuffle, decode_threads
        if not self.path.is_file():
            raise MtlrecError(
                f"{self.path}: split file not found; prepare the dataset first or fix dataset.path"
            )
        # The whole file is checked against checksums.json once, hashed in a thread while the
        # footer is read and the label columns are scanned (one line if it is damaged).
        with verified_read(self.path):
            try:
                meta = pq.ParquetFile(self.path).metadata
            except (pa.ArrowException, OSError) as e:
                raise MtlrecError(f"{self.path}: not a readable parquet file ({e})") from None
            schema = meta.schema.to_arrow_schema()
            self.columns = spec.parquet_columns
            check_schema(self.path, schema, spec)
            self.num_rows, self.num_row_groups = meta.num_rows, meta.num_row_groups
            if self.num_rows == 0:
                raise MtlrecError(f"{self.path}: the split is empty (0 rows)")
            self.funnel_violations = funnel.check_policy(funnel_violations)
            self.num_rows -= self._funnel_scan()
        # Held for the reader's life: `mtlrec prepare ... overwrite=true` refuses to swap the
        # dataset under it (the split is reopened every epoch).
        self._hold = hold_dataset(self.path.parent)

    def close(self) -> None:
        """Drop this reader's hold on the dataset dir (released when no copy holds it; also
        when the object goes away)."""
        self._hold = None

    def _funnel_scan(self) -> int:
        """Rows breaking the funnel, counted up front (label columns only): with policy error
        that is one line before the first step, with drop the epoch's true row count."""
        pairs = funnel.funnel_pairs(self.spec.funnel, self.tasks)
        if not pairs:
            return 0
        cols = sorted({c for pair in pairs for c in pair})
        pf = pq.ParquetFile(self.path)
        bad = 0
        counts: dict[tuple[str, str], int] = {}
        for g in range(self.num_row_groups):  # one row group of label columns at a time
            group = self._read_group(pf, g, cols)
            mask, part = funnel.violation_mask(_column_of(group), pairs, group.num_rows)
            bad += int(mask.sum())
            funnel.add_counts(counts, part)
        if bad and self.funnel_violations == "error":
            funnel.raise_violations(str(self.path), counts, self.num_rows)
        if bad:
            log.warning(
                "%s: dropping %s while streaming (funnel_violations=drop)",
                self.path,
                funnel.describe(counts),
            )
        return bad

    def __len__(self) -> int:
        return self.num_rows

    # -- reading (background thread) ----------------------------------------------------------
    def _convert(self, rb: pa.RecordBatch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One chunk -> (sparse fused ids, dense, labels), validated like the in-memory loader."""
        # OOV mappings are not logged per chunk (the in-memory loader logs them per split).
        sparse, dense, labels = encode_columns(
            self.path,
            self.spec,
            self.tasks,
            rb.column,
            rb.num_rows,
            log_oov=False,
            funnel_violations=self.funnel_violations,
        )
        return torch.from_numpy(sparse), torch.from_numpy(dense), torch.from_numpy(labels)

    def _group(self, pf: pq.ParquetFile, g: int) -> list[tuple[torch.Tensor, ...]]:
        """Row group g read, decoded and cut into chunks. One row group at a time:
        ParquetFile.iter_batches kept its decoded buffers alive across row groups here (pyarrow
        26: +230 MiB over 6.5M rows)."""
        group = self._read_group(pf, g, self.columns)
        return [self._convert(rb) for rb in group.to_batches(max_chunksize=self.read_rows)]

    def _read_group(self, pf: pq.ParquetFile, g: int, columns: list[str]) -> pa.Table:
        """Row group g; a damaged page (of a dataset without checksums) is one line."""
        try:
            return pf.read_row_group(g, columns=columns)
        except (pa.ArrowException, OSError) as e:
            raise MtlrecError(
                f"{self.path}: row group {g} is not readable ({e}); prepare the dataset again with overwrite=true"
            ) from None

    def _decoded(self, row_groups: list[int]) -> Iterator[tuple[torch.Tensor, ...]]:
        """Chunks of `row_groups` in order. With decode_threads > 1, that many row groups are
        read and decoded at once (pyarrow and numpy release the GIL), at most decode_threads
        ahead of the consumer, so memory stays bounded and the order is the same."""
        if self.decode_threads <= 1:
            pf = pq.ParquetFile(self.path)
            for g in row_groups:
                yield from self._group(pf, g)
            return
        local = threading.local()

        def decode(g: int) -> list[tuple[torch.Tensor, ...]]:
            if not hasattr(local, "pf"):  # a ParquetFile per thread
                local.pf = pq.ParquetFile(self.path)
            return self._group(local.pf, g)

        with ThreadPoolExecutor(self.decode_threads, thread_name_prefix="decode") as pool:
            pending: deque = deque()
            todo = iter(row_groups)
            for g in itertools.islice(todo, self.decode_threads):
                pending.append(pool.submit(decode, g))
            while pending:
                chunks = pending.popleft().result()
                nxt = next(todo, None)
                if nxt is not None:
                    pending.append(pool.submit(decode, nxt))
                yield from chunks

    def _read(self, row_groups: list[int], out: queue.Queue, stop: threading.Event) -> None:
        try:
            for item in self._decoded(row_groups):
                while not stop.is_set():
                    try:
                        out.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            out.put(_END)
        except BaseException as e:  # handed to the training loop, which raises it
            out.put(e)

    def chunks(self, row_groups: list[int]) -> Iterator[tuple[torch.Tensor, ...]]:
        """Chunks of the given row groups, read ahead by a background thread."""
        q: queue.Queue = queue.Queue(maxsize=self.prefetch)
        stop = threading.Event()
        thread = threading.Thread(target=self._read, args=(row_groups, q, stop), daemon=True)
        thread.start()
        try:
            while True:
                item = q.get()
                if item is _END:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:  # the loop stopped early (error, interrupt): let the reader finish and go
            stop.set()
            while thread.is_alive():
                with contextlib.suppress(queue.Empty):
                    q.get(timeout=0.05)
            thread.join()

    # -- batches (training loop) --------------------------------------------------------------
    def batches(self, batch_size: int, generator: torch.Generator) -> Iterator[Batch]:
        """One epoch of batches: every row once, all batches full except the last."""
        whole_file = self.shuffle_buffer >= self.num_rows
        order = list(range(self.num_row_groups))
        if self.shuffle and not whole_file:
            order = torch.randperm(self.num_row_groups, generator=generator).tolist()
        held: list[tuple[torch.Tensor, ...]] = []
        rows = 0
        for chunk in self.chunks(order):
            held.append(chunk)
            rows += chunk[0].shape[0]
            if rows >= self.shuffle_buffer + batch_size:
                held, rows = yield from self._flush(held, batch_size, generator, final=False)
        yield from self._flush(held, batch_size, generator, final=True)

    def _flush(self, held, batch_size: int, generator: torch.Generator, final: bool):
        """Batches from the buffer; returns what is left (fewer rows than one batch)."""
        if not held:
            return [], 0
        buf = [
            torch.cat(parts) if len(parts) > 1 else parts[0] for parts in zip(*held, strict=True)
        ]
        n = buf[0].shape[0]
        perm = torch.randperm(n, generator=generator) if self.shuffle else torch.arange(n)
        usable = n if final else n - n % batch_size
        for start in range(0, usable, batch_size):
            idx = perm[start : min(start + batch_size, usable)]
            yield Batch(*(t.index_select(0, idx) for t in buf))
        if usable == n:
            return [], 0
        rest = perm[usable:]
        return [tuple(t.index_select(0, rest) for t in buf)], n - usable
