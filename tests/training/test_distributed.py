"""Data-parallel training (mtlrec.training.distributed): 2 gloo ranks on CPU against one process.

The 2-rank runs are real: `trainer.devices=2` spawns two worker processes that rendezvous over TCP
on 127.0.0.1 and train with DistributedDataParallel; one test goes through the `mtlrec` CLI.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch

from mtlrec.errors import MtlrecError
from mtlrec.inference import evaluate
from mtlrec.training import distributed

# One process with batch 512 and 2 ranks with 256 each see the same 512 rows per step. The
# evaluation batch is small so that each rank predicts a different number of val/test rows
# (600 rows = batches of 256, 256, 88: rank 0 predicts 256 rows, rank 1 344) and the gather pads.
COMMON = ["trainer.eval_batch_size=256", "trainer.epochs=2", "trainer.patience=null"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """(single-process run, 2-rank run): run dir and metrics.json of each (MMoE: ctr + cvr on
    clicked rows; ESMM's tasks have no `where`, MMoE's cvr shows the masked-task difference)."""
    from conftest import run_training

    tmp = tmp_path_factory.mktemp("ddp")
    # Best epoch on the (smooth) validation loss: the near-chance AUC of this tiny model could
    # pick different epochs in two runs that differ by float rounding, and metrics.json holds the
    # best epoch's values.
    base = [*COMMON, "model=mmoe", "trainer.monitor=val/loss"]
    single = run_training(tmp, [*base, "trainer.batch_size=512"], "single")
    ddp = run_training(tmp, [*base, "trainer.batch_size=256", "trainer.devices=2"], "ddp")
    return tmp, single, ddp


def _history(run_dir: Path) -> list[dict[str, str]]:
    lines = (run_dir / "history.csv").read_text().splitlines()
    header = lines[0].split(",")
    return [dict(zip(header, line.split(","), strict=True)) for line in lines[1:]]


def test_two_ranks_write_one_run_dir_with_the_effective_batch(runs):
    tmp, _, (run_dir, metrics) = runs
    assert sorted(p.name for p in tmp.iterdir()) == ["ddp", "single"]
    assert metrics["status"] == "completed"
    assert (metrics["world_size"], metrics["effective_batch_size"]) == (2, 512)
    env = json.loads((run_dir / "env.json").read_text())
    assert env["distributed"] == {
        "launcher": "spawn",
        "backend": "gloo",
        "world_size": 2,
        "per_rank_batch_size": 256,
        "effective_batch_size": 512,
    }
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == [
        "best.pt",
        "last.prev.pt",
        "last.pt",
    ]
    assert [r["epoch"] for r in _history(run_dir)] == ["1", "2"]
    # No stray files from rank 1 (write probes, temp files).
    assert sorted(p.name for p in run_dir.iterdir()) == [
        "checkpoints",
        "env.json",
        "history.csv",
        "metrics.json",
        "reliability.json",
    ]


def test_two_ranks_match_one_process_with_the_same_global_batch(runs):
    """Close, not bit-identical: per step DDP averages the two ranks' mean losses. For ctr (every
    row) that is the mean over all 512 rows up to float rounding; for cvr (clicked rows only) it
    is (mean over rank 0's clicks + mean over rank 1's clicks) / 2, not the mean over all the
    batch's clicks, so the gradients differ a little and the runs drift apart.

    Stated tolerance after 2 epochs: 1e-3 absolute on every loss/logloss (observed <= 2.5e-4);
    0.05 absolute on AUCs, which are rank statistics: the tiny splits hold ~15 clicked test rows,
    so one swapped (conversion, non-conversion) pair moves cvr_auc by ~0.02, and the 2-epoch model
    is near chance on ctr (AUC ~0.45), where the small drift reorders many rows (observed 0.031
    on val/ctr_auc with the synthetic_ccp v3 data).
    """
    _, (single_dir, single), (ddp_dir, ddp) = runs
    assert ddp["best_epoch"] == single["best_epoch"]
    assert ddp["metrics"].keys() == single["metrics"].keys()
    for key, value in single["metrics"].items():
        # calibration (equal-mass bins, sums over few positives) moves like the AUCs
        binned = ("auc", "auc_entire", "ece", "ece_entire", "pcoc", "pcoc_entire")
        tol = 0.05 if key.endswith(binned) else 1e-3
        assert ddp["metrics"][key] == pytest.approx(value, abs=tol), key
    for a, b in zip(_history(single_dir), _history(ddp_dir), strict=True):
        for key in ("train/ctr_loss", "train/cvr_loss", "train/loss", "val/loss"):
            assert float(b[key]) == pytest.approx(float(a[key]), abs=1e-3), key
    # ...and they are two computations, not one result copied.
    assert ddp["metrics"] != single["metrics"]


# Summed losses are reduced in another order across ranks than in one process (seen:
# 1.333796739578247 vs 1.3337968587875366), so they agree to float rounding, stated as 1e-6
# relative. AUCs are computed from the gathered predictions, the same numbers in the same order as
# one process has them: those are equal, not close.
SUM_TOLERANCE = 1e-6


def _is_auc(key: str) -> bool:
    return key.endswith(("_auc", "_auc_entire"))


def test_gathered_auc_equals_single_process_evaluation_of_the_checkpoint_exactly(runs):
    """metrics.json's test metrics were computed by 2 ranks (each a block of batches, gathered);
    `mtlrec evaluate` scores the same best.pt in this one process: every AUC is equal, every
    loss equal within 1e-6 relative."""
    _, _, (run_dir, metrics) = runs
    test = evaluate(run_dir, "test")
    recorded = {k: v for k, v in metrics["metrics"].items() if k.startswith("test/")}
    assert test.keys() == recorded.keys()
    assert sum(map(_is_auc, test)) >= 3
    for key, value in recorded.items():
        if _is_auc(key):
            assert test[key] == value, key
        else:
            assert test[key] == pytest.approx(value, rel=SUM_TOLERANCE, abs=0), key
    val = evaluate(run_dir, "val")
    best = next(r for r in _history(run_dir) if r["epoch"] == str(metrics["best_epoch"]))
    for key in ("val/ctr_auc", "val/cvr_auc", "val/mean_auc"):
        assert repr(val[key]) == best[key], key  # history.csv holds repr(float)
    assert float(best["val/loss"]) == pytest.approx(val["val/loss"], rel=SUM_TOLERANCE, abs=0)


def test_a_failing_rank_stops_every_rank_and_is_reported_once(tmp_path):
    """Through the CLI: rank 1 fails at its 2nd step while rank 0 waits in the gradient
    all-reduce; the job ends (no hang) with rank 1's one-line error, shown once, exit 1."""
    run_dir = tmp_path / "run"
    env = {**os.environ, distributed.FAULT_ENV: "1:2", "HYDRA_FULL_ERROR": "0"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "mtlrec",
            "train",
            "dataset.num_rows=4000",
            "trainer.num_threads=1",
            "trainer.epochs=1",
            "trainer.batch_size=512",  # 2,800 train rows: several steps per rank
            "trainer.devices=2",
            "device=cpu",
            f"hydra.run.dir={run_dir}",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    message = "rank 1 of 2: MTLREC_DIST_FAULT: injected failure on rank 1 at step 2"
    assert proc.returncode == 1, proc.stderr
    assert (proc.stdout + proc.stderr).count("injected failure") == 1, proc.stdout + proc.stderr
    # Hydra's usual report of a user error: the one line (no traceback), once.
    assert proc.stderr.splitlines().count(message) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    metrics = json.loads((run_dir / "metrics.json").read_text())
    # spawn writes no file: it raises RankFailed, whose `text` is the line above
    # (test_rank_failures_become_one_rank_failed); experiment.run records that text.
    assert (metrics["status"], metrics["error"]) == ("failed", message)
    assert [p.name for p in tmp_path.iterdir()] == ["run"]


def test_eval_blocks_are_whole_batches_covering_every_row_once():
    for n, bs, world in [(600, 256, 2), (600, 8192, 2), (1000, 100, 3), (5, 2, 4), (7, 7, 1)]:
        blocks = [distributed.eval_block(n, bs, r, world) for r in range(world)]
        assert blocks[0][0] == 0 and blocks[-1][1] == n
        for (_, hi), (lo, _) in zip(blocks, blocks[1:], strict=False):
            assert hi == lo
        for lo, hi in blocks:
            assert lo % bs == 0 and (hi == n or hi % bs == 0)
    assert [distributed.eval_block(600, 256, r, 2) for r in (0, 1)] == [(0, 256), (256, 600)]


def test_resume_with_another_world_size_only_from_an_epoch_end(tmp_path):
    path = tmp_path / "last.pt"
    distributed.check_resume_world({"epoch": 3, "step": None, "world_size": 4}, path)  # warns
    with pytest.raises(MtlrecError) as err:
        distributed.check_resume_world({"epoch": 3, "step": 7, "world_size": 4}, path)
    assert str(err.value) == (
        f"{path}: written mid-epoch (epoch 3 step 7) by 4 rank(s); resume it with "
        "trainer.devices=4 (a different number of ranks can only continue from an epoch-end "
        "checkpoint)"
    )


def test_single_process_collectives_are_identities():
    assert not distributed.current().active
    t = torch.tensor([1.0, 2.0])
    assert distributed.all_reduce_sum(t) is t and t.tolist() == [1.0, 2.0]
    assert distributed.any_rank(True) and not distributed.decide(False)
    idx = torch.arange(10)
    assert distributed.shard(idx) is idx
    out = {"ctr": torch.arange(3.0)}
    assert distributed.gather_rows(out, 3) is out


def test_streamed_train_split_shards_row_groups_across_ranks(tmp_path):
    """dataset.streaming with 2 ranks: rank r reads row groups r, r+2, ...; both ranks run the
    same number of full batches (min over ranks of rows // b) and never share a row."""
    import pyarrow.parquet as pq

    from mtlrec.data.loader import load_split
    from mtlrec.data.sources.synthetic_ccp import ensure_prepared
    from mtlrec.data.spec import DatasetSpec
    from mtlrec.data.streaming import StreamingSplit

    path = ensure_prepared(tmp_path / "ccp", 4000, 0)
    spec = DatasetSpec.load(path)
    regrouped = tmp_path / "train_rg.parquet"  # 2800 rows: 9 groups of 300 + one of 100
    pq.write_table(pq.read_table(path / spec.splits["train"]), regrouped, row_group_size=300)
    split = StreamingSplit(regrouped, spec, shuffle_buffer=500, prefetch=2, read_rows=128)
    streams = [distributed.RankStream(split, 256, r, 2) for r in (0, 1)]
    assert [s.rows_per_rank for s in streams] == [[1500, 1300]] * 2
    assert [s.steps for s in streams] == [5, 5] and len(streams[0]) == 5 * 256 * 2
    assert streams[1].groups == [1, 3, 5, 7, 9]

    def rows(sparse, dense):
        return Counter((*a.tolist(), *b.tolist()) for a, b in zip(sparse, dense, strict=True))

    whole = load_split(regrouped, spec)
    read = Counter()
    for stream in streams:
        batches = list(stream.batches(512, torch.Generator().manual_seed(0)))
        assert [b.labels.shape[0] for b in batches] == [256] * 5
        for b in batches:
            read += rows(b.sparse, b.dense)
    # 2 x 1280 rows, none read more often than the file holds it (the data has 2 duplicate rows)
    assert read.total() == 2 * 5 * 256 and not read - rows(whole.sparse, whole.dense)
    with pytest.raises(MtlrecError, match="needs at least 12 parquet row groups"):
        distributed.RankStream(split, 256, 0, 12)


def test_bad_devices_value_is_one_line_before_anything_is_written(tmp_path):
    from conftest import run_training

    with pytest.raises(MtlrecError) as err:
        run_training(tmp_path, ["trainer.devices=0"])
    assert str(err.value) == "trainer.devices must be an integer >= 1, got 0"
    assert not (tmp_path / "run").exists()


def test_rank_failures_become_one_rank_failed():
    """What spawn raises for the first failed rank (launch._failure, no processes needed)."""
    from mtlrec.training.distributed.launch import RankError, _failure
    from mtlrec.training.signals import TrainingInterrupted

    peer = RankError(0, "RuntimeError", False, "Connection closed by peer", "Traceback ...")
    user = RankError(1, "MtlrecError", True, "dataset.x is bad", "Traceback (most recent...)")
    err = _failure(2, [peer, user], None)
    assert isinstance(err, distributed.RankFailed) and isinstance(err, MtlrecError)
    assert (err.text, err.user_error, str(err)) == ("rank 1 of 2: dataset.x is bad", True, err.text)
    crash = RankError(1, "ValueError", False, "bad", "Traceback (most recent call last):\n  x")
    err = _failure(2, [crash], None)
    assert (err.text, err.user_error) == ("rank 1 of 2: bad", False)
    assert str(err) == "rank 1 of 2: bad\nTraceback (most recent call last):\n  x"
    stop = _failure(2, [RankError(0, "TrainingInterrupted", True, "stopped", "", 15)], None)
    assert isinstance(stop, TrainingInterrupted) and stop.signum == 15
    died = _failure(2, [], RuntimeError("process 1 terminated with signal SIGKILL"))
    assert died.text == "rank ? of 2 died: process 1 terminated with signal SIGKILL"


def test_the_rendezvous_port_stays_bound_by_the_launcher():
    """The store listens on a port the OS chose and keeps it: no other process can take it
    between choosing it and the ranks connecting (the race of bind-release-reuse)."""
    import socket

    from mtlrec.training.distributed.launch import open_store

    store = open_store(2)
    assert store.port > 0
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s, pytest.raises(OSError):
        s.bind(("127.0.0.1", store.port))
    del store


PARALLEL_JOB = """
import sys
import torch
from omegaconf import OmegaConf
from mtlrec.training import distributed


def target(cfg, run_dir):
    distributed.setup(torch.device("cpu"), cfg, True)
    t = torch.tensor([distributed.current().rank + 1.0])
    return float(distributed.all_reduce_sum(t))


if __name__ == "__main__":
    cfg = OmegaConf.create({"trainer": {"devices": 2}})
    print("sum", distributed.spawn(target, cfg, sys.argv[1]))
"""


def test_two_parallel_two_rank_jobs_on_one_machine_both_succeed(tmp_path):
    script = tmp_path / "job.py"
    script.write_text(PARALLEL_JOB)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    jobs = [
        subprocess.Popen(
            [sys.executable, str(script), str(tmp_path)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for _ in range(2)
    ]
    outs = [job.communicate(timeout=120) for job in jobs]
    for job, (out, err) in zip(jobs, outs, strict=True):
        assert job.returncode == 0, err
        assert out.splitlines()[-1] == "sum 3.0"
