"""DDP with sparse embedding tables: 2 gloo ranks on CPU, `trainer.embedding_optimizer=sparse_adam`.

With sparse tables DDP all-reduces the sparse gradients (gloo's sparse all-reduce: every rank
receives every rank's (row id, gradient row) pairs, O(batch) bytes instead of the whole table).
Promised, and asserted here: the ranks' tables are identical after every step (each rank applies
the same averaged gradient with the same optimizer state); 2 ranks x 32 rows match one process
with the 64-row global batch up to float rounding (the loss here has no masked task, so the
average of the ranks' mean losses is the global mean; the existing DDP tests state the looser
tolerances of masked tasks); and the sparse path matches dense Adam (RowAdam's catch-up).
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

JOB = """
import sys
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch import nn
from mtlrec.training import distributed
from mtlrec.training.optimizers import build_optimizer

ROWS, DIM, STEPS, BATCH = 3000, 4, 15, 64


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.table = nn.Embedding(ROWS, DIM)
        self.head = nn.Linear(2 * DIM, 1)

    def forward(self, ids):
        return self.head(self.table(ids).flatten(1)).squeeze(1)

    def rows_used(self, ids):  # what FieldEmbedding tells the optimizer's catch-up
        return [(self.table, ids.reshape(-1))]


def batches():
    g = torch.Generator().manual_seed(1)
    for _ in range(STEPS):
        # half the lookups in 40 hot rows (shared by the ranks), half spread over the table
        hot = torch.randint(0, 40, (BATCH, 1), generator=g)
        cold = torch.randint(0, ROWS, (BATCH, 1), generator=g)
        yield torch.cat([hot, cold], 1), torch.randint(0, 2, (BATCH,), generator=g).float()


def train(choice, rank, world):
    model = Net()
    optimizer = build_optimizer(model, "adam", 0.01, 0.0, choice)
    ddp = nn.parallel.DistributedDataParallel(model) if world > 1 else model
    sparse_grads = []
    for ids, y in batches():
        rows = slice(rank * BATCH // world, (rank + 1) * BATCH // world)
        optimizer.catch_up(model, ids[rows])  # as Trainer.step does
        loss = F.binary_cross_entropy_with_logits(ddp(ids[rows]), y[rows])
        optimizer.zero_grad()
        loss.backward()
        sparse_grads.append(model.table.weight.grad.is_sparse)
        optimizer.step()
    optimizer.flush()
    return {"state": model.state_dict(), "sparse_grads": sparse_grads}


def target(cfg, out):
    distributed.setup(torch.device("cpu"), cfg, True)
    ctx = distributed.current()
    for choice in ("sparse_adam", "adam"):
        torch.save(train(choice, ctx.rank, ctx.world_size), f"{out}/{choice}-rank{ctx.rank}.pt")
    return 0.0


if __name__ == "__main__":
    torch.set_num_threads(1)
    distributed.spawn(target, OmegaConf.create({"trainer": {"devices": 2}}), sys.argv[1])
    for choice in ("sparse_adam", "adam"):
        torch.save(train(choice, 0, 1), f"{sys.argv[1]}/{choice}-single.pt")
"""


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp_sparse")
    (tmp / "job.py").write_text(JOB)
    done = subprocess.run(
        [sys.executable, str(tmp / "job.py"), str(tmp)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return {
        f"{choice}-{who}": torch.load(tmp / f"{choice}-{who}.pt", weights_only=True)
        for choice in ("sparse_adam", "adam")
        for who in ("rank0", "rank1", "single")
    }


@pytest.mark.slow  # two real rank processes (tests/conftest.py: SLOW_MODULES' kind)
def test_ranks_train_with_sparse_gradients_and_keep_identical_tables(results):
    rank0, rank1 = results["sparse_adam-rank0"], results["sparse_adam-rank1"]
    assert rank0["sparse_grads"] == rank1["sparse_grads"] == [True] * 15
    assert results["adam-rank0"]["sparse_grads"] == [False] * 15
    assert rank0["state"].keys() == rank1["state"].keys()
    for key in rank0["state"]:
        assert torch.equal(rank0["state"][key], rank1["state"][key]), key
    torch.manual_seed(0)
    initial = torch.nn.Embedding(3000, 4).weight.detach()
    moved = (rank0["state"]["table.weight"] - initial).abs().amax(1) > 0
    assert 500 < int(moved.sum()) < 3000  # hot rows and ~900 cold rows trained, the rest not


@pytest.mark.slow
def test_two_ranks_match_one_process_and_the_sparse_path_matches_dense_adam(results):
    for choice in ("sparse_adam", "adam"):
        ddp, single = results[f"{choice}-rank0"]["state"], results[f"{choice}-single"]["state"]
        for key in ddp:
            torch.testing.assert_close(ddp[key], single[key], rtol=0, atol=1e-6, msg=key)
    # Float rounding of O(1) weights over 15 steps (observed 5.8e-6); without the catch-up before
    # each forward (the batch reading rows that lag behind dense Adam) it was 4e-4.
    sparse, dense = results["sparse_adam-rank0"]["state"], results["adam-rank0"]["state"]
    for key in sparse:
        torch.testing.assert_close(sparse[key], dense[key], rtol=0, atol=2e-5, msg=key)


def test_sparse_tables_under_nccl_are_one_line_and_gloo_or_dense_pass():
    from torch import nn

    from mtlrec.errors import MtlrecError
    from mtlrec.training.distributed.grad_sync import check_sparse_backend
    from mtlrec.training.optimizers import build_optimizer

    model = nn.Sequential(nn.Embedding(10, 2), nn.Linear(2, 1))
    build_optimizer(model, "adam", 0.01, 0.0, "sparse_adam")
    with pytest.raises(MtlrecError) as e:
        check_sparse_backend(model, "nccl")
    assert str(e.value) == (
        "trainer.embedding_optimizer chose sparse gradients for an embedding table, and the "
        "nccl backend (trainer.devices > 1 on GPUs) has no sparse all-reduce; use "
        "trainer.embedding_optimizer=adam (dense gradients), or one GPU (docs/distributed.md)"
    )
    check_sparse_backend(model, "gloo")
    dense = nn.Sequential(nn.Embedding(10, 2), nn.Linear(2, 1))
    build_optimizer(dense, "adam", 0.01, 0.0, "adam")
    check_sparse_backend(dense, "nccl")


def test_auto_keeps_dense_gradients_under_nccl(monkeypatch):
    from torch import nn

    from mtlrec.training import optimizers

    model = nn.Sequential(nn.Embedding(optimizers.SPARSE_FROM_ROWS + 1, 1), nn.Linear(1, 1))
    monkeypatch.setattr(optimizers, "nccl_ranks", lambda: True)
    optimizers.build_optimizer(model, "adam", 0.01, 0.0, "auto")
    assert not model[0].sparse
    monkeypatch.setattr(optimizers, "nccl_ranks", lambda: False)
    optimizers.build_optimizer(model, "adam", 0.01, 0.0, "auto")
    assert model[0].sparse
