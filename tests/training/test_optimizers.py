"""mtlrec.training.optimizers: dense fused Adam + row-wise (lazy) Adam / Adagrad for embeddings."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from mtlrec.errors import MtlrecError
from mtlrec.training import optimizers as opt


class Tiny(nn.Module):
    def __init__(self, rows: int = 5, dim: int = 3):
        super().__init__()
        torch.manual_seed(0)
        self.table = nn.Embedding(rows, dim)
        self.head = nn.Linear(dim, 1)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.table(ids)).sum()


def train(model: Tiny, optimizer, batches: list[list[int]], clip: float | None = None):
    for ids in batches:
        optimizer.zero_grad()
        model(torch.tensor(ids)).backward()
        if clip is not None:
            opt.clip_grad_norm(model.parameters(), clip)
        optimizer.step()


def test_lazy_adam_equals_adam_when_every_row_is_in_every_batch():
    dense, lazy = Tiny(), Tiny()
    o_dense = opt.build_optimizer(dense, "adam", 0.01, 0.0, "adam")
    o_lazy = opt.build_optimizer(lazy, "adam", 0.01, 0.0, "sparse_adam")
    assert lazy.table.sparse and not dense.table.sparse
    train(dense, o_dense, [[0, 1, 2, 3, 4]] * 3)
    train(lazy, o_lazy, [[0, 1, 2, 3, 4]] * 3)
    torch.testing.assert_close(lazy.table.weight, dense.table.weight, rtol=0, atol=1e-6)
    torch.testing.assert_close(lazy.head.weight, dense.head.weight, rtol=0, atol=1e-6)


def test_rows_absent_from_a_batch_do_not_move_with_adagrad():
    model = Tiny()
    optimizer = opt.build_optimizer(model, "adam", 0.01, 0.0, "adagrad")
    train(model, optimizer, [[0, 1, 2, 3, 4]])
    before = model.table.weight.detach().clone()
    train(model, optimizer, [[0, 1]] * 3)
    after = model.table.weight.detach()
    assert torch.equal(after[2:], before[2:])
    assert not torch.equal(after[:2], before[:2])


def test_sparse_adam_rows_absent_wait_and_the_flush_moves_them_as_dense_adam_did():
    model, dense = Tiny(), Tiny()
    optimizer = opt.build_optimizer(model, "adam", 0.01, 0.0, "sparse_adam")
    o_dense = opt.build_optimizer(dense, "adam", 0.01, 0.0, "adam")
    for m, o in ((model, optimizer), (dense, o_dense)):
        train(m, o, [[0, 1, 2, 3, 4]])
    before = model.table.weight.detach().clone()
    for m, o in ((model, optimizer), (dense, o_dense)):
        train(m, o, [[0, 1]] * 3)
    assert torch.equal(model.table.weight.detach()[2:], before[2:])  # not touched by the steps
    assert not torch.equal(dense.table.weight.detach()[2:], before[2:])  # momentum moves them
    optimizer.flush()
    torch.testing.assert_close(model.table.weight, dense.table.weight, rtol=0, atol=1e-6)
    torch.testing.assert_close(model.head.weight, dense.head.weight, rtol=0, atol=1e-6)


def test_state_dict_resumes_exactly():
    model = Tiny()
    optimizer = opt.build_optimizer(model, "adam", 0.01, 0.0, "sparse_adam")
    train(model, optimizer, [[0, 1], [2, 3]])
    twin = copy.deepcopy(model)
    twin_opt = opt.build_optimizer(twin, "adam", 0.01, 0.0, "sparse_adam")
    twin_opt.load_state_dict(copy.deepcopy(optimizer.state_dict()))
    train(model, optimizer, [[1, 4], [0, 0]])
    train(twin, twin_opt, [[1, 4], [0, 0]])
    assert torch.equal(model.table.weight, twin.table.weight)
    assert torch.equal(model.head.weight, twin.head.weight)


def test_old_single_optimizer_state_loads_and_a_changed_choice_is_refused():
    model = Tiny()
    plain = torch.optim.Adam(
        [{"params": [model.head.weight, model.head.bias]}, {"params": [model.table.weight]}],
        lr=0.01,
    )
    train(model, plain, [[0, 1]])
    multi = opt.build_optimizer(model, "adam", 0.01, 0.0, "adam")
    multi.load_state_dict(plain.state_dict())
    assert multi.state_dict()["optimizers"][0]["state"].keys() == plain.state_dict()["state"].keys()
    sparse = opt.build_optimizer(Tiny(), "adam", 0.01, 0.0, "sparse_adam")
    with pytest.raises(ValueError, match="the checkpoint has 1 optimizer"):
        sparse.load_state_dict(plain.state_dict())


def test_clipping_sparse_gradients_equals_clipping_dense_ones():
    dense, lazy = Tiny(), Tiny()
    lazy.table.sparse = True
    for m in (dense, lazy):
        m(torch.tensor([0, 0, 3])).backward()  # a repeated row: its gradients add up
    n_dense = torch.nn.utils.clip_grad_norm_(dense.parameters(), 0.1)
    n_lazy = opt.clip_grad_norm(lazy.parameters(), 0.1)
    torch.testing.assert_close(n_lazy, n_dense)
    torch.testing.assert_close(lazy.table.weight.grad.to_dense(), dense.table.weight.grad)
    torch.testing.assert_close(lazy.head.weight.grad, dense.head.weight.grad)


def test_tables_sharded_over_ranks_are_not_held_against_one_device(monkeypatch):
    """TorchRec splits the tables over several ranks (its planner checks each rank's part): the
    start's check does not refuse them for one device's memory; one rank: refused as ever."""
    from mtlrec.run_process import check_embedding_memory

    monkeypatch.setattr(opt, "free_memory", lambda device: 50_000)
    model, gpu = Tiny(rows=100_000, dim=8), torch.device("cuda", 0)  # 3.1 MiB of weights
    with pytest.raises(MtlrecError, match="do not fit in the 0.00 GiB free on cuda:0"):
        check_embedding_memory(model, "adagrad", gpu)
    assert check_embedding_memory(model, "adagrad", gpu, sharded_over=2) == (
        "embedding tables 3.1 MiB, placed on 2 ranks by TorchRec's planner "
        "(trainer.sharding, trainer.shard_memory_mb)"
    )


def test_on_the_cpu_a_table_still_to_be_drawn_in_shards_is_counted(monkeypatch):
    """On the CPU a table that exists already counts as free memory (only its state is to come);
    a meta one (the TorchRec backend draws it into its shards later) does not."""
    from mtlrec.run_process import check_embedding_memory

    model, cpu = Tiny(rows=100_000, dim=8), torch.device("cpu")
    weights, state = opt.table_bytes(model, "adagrad")
    monkeypatch.setattr(opt, "free_memory", lambda device: state + 1000)
    assert check_embedding_memory(model, "adagrad", cpu).startswith("embedding tables 3.1 MiB")
    model.table = nn.Embedding(100_000, 8, device="meta")
    with pytest.raises(MtlrecError, match="do not fit in the 0.00 GiB free on cpu"):
        check_embedding_memory(model, "adagrad", cpu)


def test_auto_picks_sparse_only_for_large_tables():
    small, large = nn.Embedding(10, 2), nn.Embedding(opt.SPARSE_FROM_ROWS + 1, 1)
    assert opt.table_choice(small, "auto") == "adam"
    assert opt.table_choice(large, "auto") == "sparse_adam"
    assert opt.table_choice(large, "adam") == "adam"


def test_memory_report_and_a_table_too_large_is_one_line():
    model = Tiny(rows=1000, dim=8)  # 32,000 bytes of weights
    assert opt.table_bytes(model, "adam") == (32_000, 64_000)
    assert opt.table_bytes(model, "adagrad") == (32_000, 32_000)
    assert opt.check_fits(model, "adam", 10**9, "cpu").startswith("embedding tables 0.0 MiB")
    with pytest.raises(MtlrecError) as e:
        opt.check_fits(model, "adam", 50_000, "cuda:0")
    assert str(e.value).startswith(
        "embedding tables 0.0 MiB + optimizer state 0.1 MiB = 0.00 GiB do not fit in the 0.00 GiB "
        "free on cuda:0; use feature hashing"
    )


# -- through a real run --------------------------------------------------------------------------
SPARSE = ["model=mmoe", "trainer.embedding_optimizer=sparse_adam", "trainer.batch_size=64"]


def test_a_sparse_run_interrupted_and_resumed_equals_one_never_stopped(tmp_path, monkeypatch):
    """Lazy Adam's per-row state is in the checkpoint: a resume mid-epoch is exact."""
    import json

    from conftest import TINY, compose_train
    from mtlrec.experiment import run
    from mtlrec.training.signals import StopRequest, TrainingInterrupted

    straight = tmp_path / "straight"
    run(compose_train([*TINY, *SPARSE]), straight)

    class StopAt(StopRequest):
        polls = 0

        @property
        def requested(self) -> bool:
            StopAt.polls += 1
            if StopAt.polls >= 60:  # mid-epoch 2 (43 steps per epoch)
                self.signum = 15
            return self.signum is not None

    monkeypatch.setattr("mtlrec.experiment.StopRequest", StopAt)
    stopped = tmp_path / "stopped"
    with pytest.raises(TrainingInterrupted):
        run(compose_train([*TINY, *SPARSE]), stopped)
    monkeypatch.setattr("mtlrec.experiment.StopRequest", StopRequest)
    run(compose_train([*TINY, *SPARSE, f"resume={stopped}"]), stopped)
    a = json.loads((straight / "metrics.json").read_text())["metrics"]
    b = json.loads((stopped / "metrics.json").read_text())["metrics"]
    assert a == b and a["test/mean_auc"] > 0.5
    weights = [
        torch.load(d / "checkpoints" / "last.pt", weights_only=True)["model_state"]
        for d in (straight, stopped)
    ]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_sparse_tables_with_a_gradient_writing_balancer_is_one_line(tmp_path):
    from conftest import TINY, compose_train
    from mtlrec.experiment import run

    with pytest.raises(MtlrecError) as e:
        run(compose_train([*TINY, *SPARSE, "balance=pcgrad"]), tmp_path / "run")
    assert str(e.value) == (
        "balance=pcgrad projects dense per-task gradients and cannot take the sparse embedding "
        "gradients of trainer.embedding_optimizer=sparse_adam; use "
        "trainer.embedding_optimizer=adam with it"
    )


def test_auto_keeps_dense_adam_for_the_embedded_data(train_tiny):
    """auto switches to the sparse path only above SPARSE_FROM_ROWS (100k) rows: small tables
    keep the dense path."""
    _, auto = train_tiny(["model=mmoe"], name="auto")
    _, adam = train_tiny(["model=mmoe", "trainer.embedding_optimizer=adam"], name="adam")
    assert auto["metrics"] == adam["metrics"]
