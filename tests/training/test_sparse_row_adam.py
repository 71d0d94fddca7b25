"""mtlrec.training.row_adam: Adam on the rows a batch uses (lazy, or caught up with dense Adam)."""

from __future__ import annotations

import copy
import warnings

import torch
from torch import nn

from mtlrec.training import optimizers as opt
from mtlrec.training.row_adam import RowAdam, drift_scale, unique_rows

ROWS, DIM = 40, 3


def sparse_grad(ids: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    with warnings.catch_warnings():  # torch's note that invariant checks are off
        warnings.simplefilter("ignore")
        return torch.sparse_coo_tensor(ids.unsqueeze(0), values, (ROWS, DIM))


def schedule(steps: int, per_step: int, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Random batches of row ids (with repeats) and their gradient rows."""
    g = torch.Generator().manual_seed(seed)
    return [
        (torch.randint(0, ROWS, (per_step,), generator=g), torch.randn(per_step, DIM, generator=g))
        for _ in range(steps)
    ]


def run(optimizer: torch.optim.Optimizer, p: nn.Parameter, batches, dense: bool = False) -> None:
    for ids, values in batches:
        grad = sparse_grad(ids, values)
        p.grad = grad.to_dense() if dense else grad
        optimizer.step()


def params(n: int = 3) -> list[nn.Parameter]:
    start = torch.randn(ROWS, DIM, generator=torch.Generator().manual_seed(7))
    return [nn.Parameter(start.clone()) for _ in range(n)]


def test_unique_rows_sums_repeated_rows_like_coalesce():
    ids, values = torch.tensor([3, 1, 3, 0, 1, 3]), torch.arange(18.0).view(6, 3)
    rows, summed = unique_rows(sparse_grad(ids, values))
    want = sparse_grad(ids, values).coalesce()
    assert rows.tolist() == [0, 1, 3] == want.indices()[0].tolist()
    assert torch.equal(summed, want.values())
    assert summed[2].tolist() == [0 + 6 + 15, 1 + 7 + 16, 2 + 8 + 17]


def test_lazy_row_adam_equals_torch_sparse_adam():
    mine, torchs = params(2)
    batches = schedule(30, 12)
    run(RowAdam([mine], lr=0.01), mine, batches)
    run(torch.optim.SparseAdam([torchs], lr=0.01), torchs, batches)
    torch.testing.assert_close(mine, torchs, rtol=0, atol=1e-5)
    assert not torch.equal(mine, params(1)[0])  # it trained


def test_catch_up_after_flush_equals_dense_adam_where_lazy_adam_does_not():
    """Rows used every ~13 steps for 3000 steps (past the exact table's 2000): catch-up + flush
    lands within 1e-4 of dense Adam; lazy Adam is off by > 100x that."""
    caught, lazy, dense = params()
    batches = schedule(3000, 3, seed=1)
    catch_up = RowAdam([caught], lr=0.001, catch_up=True)
    run(catch_up, caught, batches)
    catch_up.flush()
    run(RowAdam([lazy], lr=0.001), lazy, batches)
    run(torch.optim.Adam([dense], lr=0.001), dense, batches, dense=True)
    moved = (dense - params(1)[0]).abs().max().item()
    error, lazy_error = ((p - dense).abs().max().item() for p in (caught, lazy))
    assert moved > 0.05
    assert error < 1e-4 < lazy_error / 100
    assert catch_up.state[caught]["last_step"].tolist() == [3000] * ROWS


def test_every_row_in_every_batch_is_dense_adam_with_or_without_catch_up():
    caught, lazy, dense = params()
    ids = torch.arange(ROWS).repeat(2)
    batches = [(ids, values) for _, values in schedule(20, 2 * ROWS)]
    run(RowAdam([caught], lr=0.01, catch_up=True), caught, batches)
    run(RowAdam([lazy], lr=0.01), lazy, batches)
    run(torch.optim.Adam([dense], lr=0.01), dense, batches, dense=True)
    torch.testing.assert_close(caught, dense, rtol=0, atol=1e-6)
    torch.testing.assert_close(lazy, dense, rtol=0, atol=1e-6)


def test_drift_scale_is_the_sum_of_bias_corrected_geometric_terms():
    b1, b2 = 0.9, 0.999
    r = b1 / b2**0.5
    last = torch.tensor([0, 5, 1990, 2500, 7])
    got = drift_scale(last, 2010, b1, b2)
    for i, start in enumerate(last.tolist()):
        want = sum(
            r ** (u - start) * (1 - b2**u) ** 0.5 / (1 - b1**u) for u in range(start + 1, 2011)
        )
        assert abs(got[i].item() - want) <= 1e-4 * abs(want) + 1e-12, (start, got[i], want)
    assert drift_scale(torch.tensor([2010]), 2010, b1, b2).item() == 0.0  # nothing missed


def test_state_is_allocated_at_build_and_resumes_exactly_mid_gap():
    p, twin = params(2)
    optimizer = RowAdam([p], lr=0.01, catch_up=True)
    state = optimizer.state[p]
    assert state["moments"].shape == (ROWS, 2 * DIM) and not state["moments"].any()
    assert state["last_step"].dtype == torch.int64
    batches = schedule(40, 5, seed=2)
    run(optimizer, p, batches[:25])
    saved = copy.deepcopy(optimizer.state_dict())
    twin.data.copy_(p.data)
    twin_opt = RowAdam([twin], lr=0.01, catch_up=True)
    twin_opt.load_state_dict(saved)
    assert twin_opt.state[twin]["last_step"].dtype == torch.int64
    assert torch.equal(twin_opt.state[twin]["last_step"], state["last_step"])
    run(optimizer, p, batches[25:])
    run(twin_opt, twin, batches[25:])
    optimizer.flush()
    twin_opt.flush()
    assert torch.equal(p, twin)


def test_build_optimizer_uses_row_adam_with_catch_up_and_counts_its_state():
    model = nn.Sequential(nn.Embedding(1000, 8), nn.Linear(8, 1))
    multi = opt.build_optimizer(model, "adam", 0.01, 0.0, "sparse_adam")
    row = multi.optimizers[1]
    assert isinstance(row, RowAdam) and row.catch_up
    assert opt.table_bytes(model, "sparse_adam") == (1000 * 8 * 4, 2 * 1000 * 8 * 4 + 1000 * 8)


def test_a_run_flushes_the_lazy_rows_before_each_validation(tmp_path):
    """Every epoch ends with every row brought up to the epoch's last step: the weights that are
    validated, kept as best and checkpointed are dense Adam's, not rows left behind."""
    from conftest import TINY, compose_train
    from mtlrec.experiment import run as run_experiment

    overrides = ["model=mmoe", "trainer.embedding_optimizer=sparse_adam", "trainer.batch_size=64"]
    run_experiment(compose_train([*TINY, *overrides, "trainer.epochs=2"]), tmp_path / "run")
    payload = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)
    row_state = payload["optimizer_state"]["optimizers"][1]["state"][0]
    step = int(row_state["step"])
    assert step == 2 * 43  # 2 epochs of 43 steps (TINY at batch 64)
    assert row_state["last_step"].tolist() == [step] * row_state["last_step"].shape[0]


def test_a_sparse_adam_checkpoint_from_before_row_adam_resumes():
    """torch.optim.SparseAdam's state (exp_avg, exp_avg_sq, step) loads into RowAdam: the rows'
    next steps are SparseAdam's next steps (every row current at the saved step)."""
    old, new = params(2)
    batches = schedule(30, 8, seed=3)
    sparse_adam = torch.optim.SparseAdam([old], lr=0.01)
    run(sparse_adam, old, batches[:20])
    new.data.copy_(old.data)
    row = RowAdam([new], lr=0.01)
    row.load_state_dict(copy.deepcopy(sparse_adam.state_dict()))
    assert int(row.state[new]["step"]) == 20
    assert row.state[new]["last_step"].tolist() == [20] * ROWS
    run(sparse_adam, old, batches[20:])
    run(row, new, batches[20:])
    torch.testing.assert_close(new, old, rtol=0, atol=1e-5)
