"""streaming=enabled: every row once per epoch, bounded reader, same results as in memory."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from collections import Counter

import pyarrow.parquet as pq
import pytest
import torch

from mtlrec.data.loader import load_split
from mtlrec.data.sources.synthetic_ccp import ensure_prepared
from mtlrec.data.spec import DatasetSpec
from mtlrec.data.streaming import StreamingSplit
from mtlrec.errors import MtlrecError
from mtlrec.training.trainer import gather

ROWS = 4000


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """A tiny synthetic_ccp dataset whose train file has many small row groups."""
    path = ensure_prepared(tmp_path_factory.mktemp("stream") / "ccp", ROWS, 0)
    spec = DatasetSpec.load(path)
    train = path / spec.splits["train"]
    regrouped = path / "train_rg.parquet"
    pq.write_table(pq.read_table(train), regrouped, row_group_size=300)
    return path, spec, regrouped


def _rows(batches) -> Counter:
    return Counter(
        tuple(s.tolist()) + tuple(d.tolist()) + tuple(y.tolist())
        for b in batches
        for s, d, y in zip(b.sparse, b.dense, b.labels, strict=True)
    )


def test_every_row_exactly_once_per_epoch_with_a_small_buffer(prepared):
    path, spec, regrouped = prepared
    whole = load_split(regrouped, spec)
    expected = _rows([whole])
    split = StreamingSplit(regrouped, spec, shuffle_buffer=500, prefetch=2, read_rows=128)
    assert len(split) == len(whole) == 2800 and split.num_row_groups == 10
    gen = torch.Generator().manual_seed(0)
    epochs = []
    for _ in range(2):
        batches = list(split.batches(256, gen))
        assert len(batches) == math.ceil(2800 / 256)
        assert [len(b) for b in batches[:-1]] == [256] * (len(batches) - 1)
        assert len(batches[-1]) == 2800 - 256 * (len(batches) - 1)
        assert _rows(batches) == expected  # the same multiset of rows: each row once
        epochs.append(torch.cat([b.sparse for b in batches]))
    assert not torch.equal(epochs[0], whole.sparse)  # shuffled, not file order
    assert not torch.equal(epochs[0], epochs[1])  # a new order every epoch
    assert batches[0].sparse.dtype == torch.int64 and batches[0].dense.dtype == torch.float32


def test_whole_file_buffer_gives_the_in_memory_order_exactly(prepared):
    path, spec, regrouped = prepared
    whole = load_split(regrouped, spec)
    split = StreamingSplit(regrouped, spec, shuffle_buffer=10_000, read_rows=128)
    streamed = list(split.batches(256, torch.Generator().manual_seed(7)))
    perm = torch.randperm(len(whole), generator=torch.Generator().manual_seed(7))
    for k, b in enumerate(streamed):
        ref = gather(whole, perm[k * 256 : (k + 1) * 256], on_device=True)
        assert torch.equal(b.sparse, ref.sparse) and torch.equal(b.dense, ref.dense)
        assert torch.equal(b.labels, ref.labels)


def test_shuffle_off_reads_in_file_order(prepared):
    path, spec, regrouped = prepared
    whole = load_split(regrouped, spec)
    split = StreamingSplit(regrouped, spec, shuffle_buffer=300, read_rows=100, shuffle=False)
    batches = list(split.batches(64, torch.Generator()))
    assert torch.equal(torch.cat([b.sparse for b in batches]), whole.sparse)


def test_reader_thread_ends_when_the_loop_stops_early(prepared):
    import threading

    path, spec, regrouped = prepared
    split = StreamingSplit(regrouped, spec, shuffle_buffer=200, prefetch=1, read_rows=50)
    before = threading.active_count()
    it = split.batches(32, torch.Generator())
    next(it)
    it.close()  # the training loop raised or was interrupted
    assert threading.active_count() == before


def test_bad_files_and_settings_fail_with_one_line(prepared, tmp_path):
    path, spec, regrouped = prepared
    table = pq.read_table(regrouped).drop_columns(["item_id"])
    pq.write_table(table, tmp_path / "bad.parquet")
    with pytest.raises(MtlrecError, match=r"bad.parquet: missing column\(s\) \['item_id'\]"):
        StreamingSplit(tmp_path / "bad.parquet", spec)
    with pytest.raises(
        MtlrecError, match="streaming.shuffle_buffer must be an integer >= 1, got 0"
    ):
        StreamingSplit(regrouped, spec, shuffle_buffer=0)
    with pytest.raises(MtlrecError, match="nope.parquet: split file not found"):
        StreamingSplit(tmp_path / "nope.parquet", spec)


def test_training_streamed_with_whole_file_buffer_equals_in_memory(train_tiny):
    _, mem = train_tiny(["trainer.epochs=1"], name="mem")
    _, streamed = train_tiny(["trainer.epochs=1", "streaming=enabled"], name="stream")
    assert streamed["status"] == "completed"
    assert streamed["metrics"] == mem["metrics"]  # bit-identical: same order, same arithmetic


def test_training_streamed_through_the_cli_with_a_small_buffer(tmp_path):
    run_dir = tmp_path / "cli"
    cmd = [sys.executable, "-m", "mtlrec", "train", f"dataset.num_rows={ROWS}", "trainer.epochs=1",
           "trainer.batch_size=256", "trainer.num_threads=1", "device=cpu", "streaming=enabled",
           "streaming.shuffle_buffer=500", "streaming.read_rows=200", f"hydra.run.dir={run_dir}"]  # fmt: skip
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "completed"
    assert 0.0 < metrics["metrics"]["test/ctr_auc"] < 1.0
    log = (run_dir / "train.log").read_text()
    assert "data: train streamed from" in log and "shuffle buffer 500 rows" in log


def test_decode_threads_give_the_same_batches_in_the_same_order(prepared):
    """streaming.decode_threads > 1 reads several row groups at once; the epoch is identical."""
    path, spec, regrouped = prepared
    epochs = {}
    for threads in (1, 3):
        split = StreamingSplit(
            regrouped, spec, shuffle_buffer=500, prefetch=2, read_rows=128, decode_threads=threads
        )
        gen = torch.Generator().manual_seed(7)
        epochs[threads] = [
            torch.cat([getattr(b, name) for b in split.batches(256, gen)])
            for name in ("sparse", "dense", "labels")
        ]
    assert all(torch.equal(a, b) for a, b in zip(epochs[1], epochs[3], strict=True))
    with pytest.raises(MtlrecError, match=r"^streaming.decode_threads must be an integer >= 1"):
        StreamingSplit(regrouped, spec, decode_threads=0)
