"""Data parallelism with bag, weighted-bag, sequence (target attention) and hashed fields: 2
gloo ranks on CPU shard the rows as one process would and agree with it, as
tests/training/test_distributed.py asserts for single-id fields."""

from __future__ import annotations

import json
from collections import Counter

import pyarrow.parquet as pq
import pytest
import torch

from helpers.multidata import rich_config, write_rich_csv
from mtlrec.data.loader import load_split
from mtlrec.data.prepare.manifest import write_manifest
from mtlrec.data.sources import prepare_dataset
from mtlrec.data.spec import DatasetSpec
from mtlrec.data.streaming import StreamingSplit
from mtlrec.inference import evaluate
from mtlrec.training import distributed

SPLITS = ("train", "val", "test")
# 300 test rows in eval batches of 128: rank 0 predicts 128 rows, rank 1 172 (the gather pads).
COMMON = ["trainer.eval_batch_size=128", "trainer.epochs=2", "trainer.patience=null"]


@pytest.fixture(scope="module")
def rich(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp_rich")
    for i, split in enumerate(SPLITS):
        write_rich_csv(tmp / f"{split}.csv", n=1200 if split == "train" else 300, seed=40 + i)
    spec = prepare_dataset(rich_config(tmp, {s: f"{s}.csv" for s in SPLITS})).spec
    assert {f.kind for f in spec.features} == {"sparse", "bag", "sequence", "dense"}
    assert spec.feature("history").pool == "target_attention"
    return tmp, tmp / "prepared"


@pytest.fixture(scope="module")
def runs(rich):
    """(single process, batch 256) and (2 ranks, 128 each): run dir and metrics.json of each."""
    from conftest import run_training

    tmp, prepared = rich
    base = [*COMMON, "dataset=prepared", f"dataset.path={prepared}", "model=mmoe"]
    base.append("trainer.monitor=val/loss")  # smooth: both runs pick the same best epoch
    single = run_training(tmp, [*base, "trainer.batch_size=256"], "single")
    ddp = run_training(tmp, [*base, "trainer.batch_size=128", "trainer.devices=2"], "ddp")
    return single, ddp


def _history(run_dir) -> list[dict[str, str]]:
    lines = (run_dir / "history.csv").read_text().splitlines()
    header = lines[0].split(",")
    return [dict(zip(header, line.split(","), strict=True)) for line in lines[1:]]


@pytest.mark.slow
def test_two_ranks_on_bags_and_sequences_match_one_process(runs):
    """Both tasks (rich, rating) are defined on every row, so the mean of the two ranks' mean
    losses is the mean over the global batch up to float rounding, and the runs stay together:
    every loss within 1e-5 (observed 2.6e-8 after 2 epochs), the AUC within 0.01 (a rank
    statistic on 300 rows; observed equal)."""
    (single_dir, single), (ddp_dir, ddp) = runs
    assert ddp["status"] == "completed"
    assert (ddp["world_size"], ddp["effective_batch_size"]) == (2, 256)
    env = json.loads((ddp_dir / "env.json").read_text())["distributed"]
    assert (env["world_size"], env["per_rank_batch_size"]) == (2, 128)
    assert ddp["best_epoch"] == single["best_epoch"]
    assert ddp["metrics"].keys() == single["metrics"].keys()
    for key, value in single["metrics"].items():
        tol = 0.01 if key.endswith("_auc") else 1e-5
        assert ddp["metrics"][key] == pytest.approx(value, abs=tol), key
    for a, b in zip(_history(single_dir), _history(ddp_dir), strict=True):
        for key in ("train/rich_loss", "train/rating_loss", "train/loss", "val/loss"):
            assert float(b[key]) == pytest.approx(float(a[key]), abs=1e-5), key
    assert ddp["metrics"] != single["metrics"]  # two computations, not one result copied


@pytest.mark.slow
def test_gathered_metrics_equal_one_process_evaluation_of_the_checkpoint(runs):
    """The 2 ranks' test metrics (each a block of whole eval batches, gathered) equal `evaluate`
    of the same best.pt in one process: AUCs exactly, summed losses within 1e-6 relative."""
    _, (ddp_dir, ddp) = runs
    test = evaluate(ddp_dir, "test")
    recorded = {k: v for k, v in ddp["metrics"].items() if k.startswith("test/")}
    assert test.keys() == recorded.keys() and "test/rich_auc" in test
    for key, value in recorded.items():
        if key.endswith("_auc"):
            assert test[key] == value, key
        else:
            assert test[key] == pytest.approx(value, rel=1e-6, abs=0), key


def test_in_memory_shards_split_each_global_batch_of_bag_and_sequence_rows(rich):
    """Each rank takes a contiguous half of the global batch of row indices; gathering its rows
    of the split tensors gives every padded bag/sequence/weight column of the global batch once."""
    _, prepared = rich
    spec = DatasetSpec.load(prepared)
    split = load_split(prepared / "train.parquet", spec, spec.tasks)
    assert split.sparse.shape[1] == spec.layout.sparse_width == 15
    assert (split.sparse[:, 3:] == -1).any() and (split.dense[:, 1:] == 0).any()  # padding
    perm = torch.randperm(len(split), generator=torch.Generator().manual_seed(0))[:256]
    halves = torch.tensor_split(perm, 2)
    assert [len(h) for h in halves] == [128, 128]
    parts = [split.take(h) for h in halves]
    whole = split.take(perm)
    assert torch.equal(torch.cat([p.sparse for p in parts]), whole.sparse)
    assert torch.equal(torch.cat([p.dense for p in parts]), whole.dense)
    assert distributed.shard(perm) is perm  # one process: the whole batch


def test_streamed_shards_read_disjoint_row_groups_with_bags_and_sequences(rich, tmp_path):
    """streaming with 2 ranks: rank r reads row groups r, r+2, ... of the train file; both run
    the same number of full batches, never share a row, and each row's bag, sequence and weight
    columns arrive exactly as the in-memory loader lays them out."""
    _, prepared = rich
    spec = DatasetSpec.load(prepared)
    regrouped = tmp_path / "train_rg.parquet"  # 1200 rows in groups of 250, 250, 250, 250, 200
    pq.write_table(pq.read_table(prepared / "train.parquet"), regrouped, row_group_size=250)
    split = StreamingSplit(regrouped, spec, shuffle_buffer=300, prefetch=2, read_rows=100)
    streams = [distributed.RankStream(split, 128, r, 2) for r in (0, 1)]
    # rank 0 holds groups 0, 2, 4 (700 rows), rank 1 groups 1, 3 (500 rows)
    assert [s.groups for s in streams] == [[0, 2, 4], [1, 3]]
    assert [s.rows_per_rank for s in streams] == [[700, 500]] * 2
    assert [s.steps for s in streams] == [3, 3]  # min(700, 500) // 128

    def rows(sparse, dense):
        return Counter((*a.tolist(), *b.tolist()) for a, b in zip(sparse, dense, strict=True))

    whole = rows(load_split(regrouped, spec).sparse, load_split(regrouped, spec).dense)
    per_rank = []
    for stream in streams:
        batches = list(stream.batches(256, torch.Generator().manual_seed(0)))
        assert [b.labels.shape[0] for b in batches] == [128] * 3
        per_rank.append(sum((rows(b.sparse, b.dense) for b in batches), Counter()))
    assert [c.total() for c in per_rank] == [384, 384]
    assert not per_rank[0] & per_rank[1]  # no row on both ranks
    assert not (per_rank[0] + per_rank[1]) - whole  # every row streamed is a row of the file
    groups = pq.ParquetFile(regrouped)
    for stream, counted in zip(streams, per_rank, strict=True):
        own = Counter()
        for g in stream.groups:
            t = load_split_group(groups, g, spec, tmp_path)
            own += rows(t.sparse, t.dense)
        assert not counted - own  # a rank reads only its own row groups


def load_split_group(file: pq.ParquetFile, group: int, spec: DatasetSpec, where):
    path = where / f"group{group}.parquet"
    pq.write_table(file.read_row_group(group), path)
    return load_split(path, spec)


@pytest.mark.slow
def test_two_ranks_stream_bags_and_sequences_and_evaluate_exactly(rich, tmp_path):
    """streaming=enabled with 2 ranks on the rich data (train file in 5 row groups, each rank
    reading its own: test_streamed_shards_... above) trains both epochs, and its gathered test
    metrics equal one process's evaluation of its best.pt (AUCs exactly)."""
    import shutil

    from conftest import run_training

    _, prepared = rich
    data = tmp_path / "regrouped"
    shutil.copytree(prepared, data)
    pq.write_table(
        pq.read_table(prepared / "train.parquet"), data / "train.parquet", row_group_size=250
    )
    write_manifest(data)  # the rewritten split, published again with its new checksums
    overrides = [*COMMON, "dataset=prepared", f"dataset.path={data}", "model=mmoe"]
    overrides += ["trainer.batch_size=128", "trainer.devices=2", "streaming=enabled"]
    overrides += ["streaming.shuffle_buffer=300", "streaming.read_rows=100"]
    run_dir, metrics = run_training(tmp_path, overrides, "stream")
    assert metrics["status"] == "completed" and metrics["world_size"] == 2
    assert metrics["epochs_run"] == 2
    test = evaluate(run_dir, "test")
    recorded = {k: v for k, v in metrics["metrics"].items() if k.startswith("test/")}
    assert test.keys() == recorded.keys()
    for key, value in recorded.items():
        if key.endswith("_auc"):
            assert test[key] == value, key
        else:
            assert test[key] == pytest.approx(value, rel=1e-6, abs=0), key
