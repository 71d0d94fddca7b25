"""mtlrec.training.row_adam: Adam on the rows a batch uses (lazy, or caught up with dense Adam)."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn

from mtlrec.training import optimizers as opt
from mtlrec.training.adam_drift import drift_steps
from mtlrec.training.row_adam import RowAdam, unique_rows

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
    """Rows used every ~13 steps for 3000 steps: catch-up + flush
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


def step_by_step(last: int, upto: int, root_v_over_eps: float, b1=0.9, b2=0.999) -> float:
    """Dense Adam's zero-gradient steps last+1..upto one at a time, as D / eps (m = 1, eps = 1)."""
    x = root_v_over_eps
    return sum(
        b1**j / (1 - b1 ** (last + j)) / (x * b2 ** (j / 2) / (1 - b2 ** (last + j)) ** 0.5 + 1)
        for j in range(1, upto - last + 1)
    )


def test_drift_steps_is_dense_adams_zero_gradient_steps_eps_included():
    """Per row and element, the closed form is within the module's bound of the step-by-step
    sum, from rows where eps is nothing (sqrt(v) = 1e4 eps) to rows where it is all (1e-4 eps)."""
    lasts = [0, 1, 5, 60, 1990, 5990, 7000]  # 5990, 7000: past the exact tables
    ratios = torch.tensor([[1e-4, 1e-2, 0.3, 1.0, 3.0, 100.0, 1e4]], dtype=torch.float64)
    for upto_gap in (1, 2, 9, 40, 300):
        last = torch.tensor(lasts)
        for i, start in enumerate(lasts):
            got = drift_steps(last[i : i + 1], start + upto_gap, 0.9, 0.999, 1.0, ratios**2)
            for e, x in enumerate(ratios[0].tolist()):
                want = step_by_step(start, start + upto_gap, x)
                bound = 2e-3 if start < 50 else 1e-4
                assert abs(got[0, e].item() / want - 1) <= bound, (start, upto_gap, x)
    nothing = drift_steps(torch.tensor([7]), 7, 0.9, 0.999, 1e-8, torch.ones(1, 3))
    assert nothing.abs().max().item() == 0.0  # nothing missed


@pytest.mark.parametrize("scale", [1.0, 1e-4, 1e-6, 1e-8])
def test_catch_up_equals_dense_adam_with_tiny_gradients(scale):
    """Gradients near Adam's eps (1e-8): the missed steps' eps matters, and the catch-up takes it
    in: max error / max move <= 3e-4 here at every scale (eps left out of the catch-up:
    4e-3 at 1e-4, 0.11 at 1e-6, 2.7 at 1e-8). No weight decay: tables take none."""
    caught, dense = params(2)
    batches = [(ids, values * scale) for ids, values in schedule(200, 3, seed=4)]
    catch_up = RowAdam([caught], lr=0.01, catch_up=True)
    run(catch_up, caught, batches)
    catch_up.flush()
    run(torch.optim.Adam([dense], lr=0.01), dense, batches, dense=True)
    moved = (dense - params(1)[0]).abs().max().item()
    assert moved > 0.05  # every scale moves the rows (Adam is scale-free until eps)
    assert (caught - dense).abs().max().item() < 1e-3 * moved


def test_tables_take_no_weight_decay_so_the_catch_up_has_none():
    model = nn.Sequential(nn.Embedding(1000, 8), nn.Linear(8, 1))
    multi = opt.build_optimizer(model, "adam", 0.01, 0.1, "sparse_adam")
    row = multi.optimizers[1]
    assert isinstance(row, RowAdam) and "weight_decay" not in row.defaults
    assert multi.optimizers[0].param_groups[0]["weight_decay"] == 0.1  # the dense layers only


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
    trained = row_state["moments"].ne(0).any(1)  # the rows dense Adam's momentum still moves
    assert trained.sum() > 10 and not trained.all()  # (rows never used stay 0: not moved)
    assert row_state["last_step"][trained].tolist() == [step] * int(trained.sum())


def full_flush(optimizer: RowAdam, p: nn.Parameter) -> None:
    """The flush as it was: dense Adam's zero-gradient steps for every row of the table."""
    state, group = optimizer.state[p], optimizer.group_of[p]
    t = int(state["step"])
    with torch.no_grad():
        m, v = state["moments"][:, :DIM], state["moments"][:, DIM:]
        optimizer._drift(p.data, m, v, state["last_step"], t, group)
    state["last_step"].fill_(t)


def test_the_flush_moves_only_rows_with_momentum_and_equals_a_full_table_flush():
    p, twin = params(2)
    batches = [(ids % 25, values) for ids, values in schedule(30, 4, seed=5)]  # rows 25+ unused
    optimizers = [RowAdam([q], lr=0.01, catch_up=True) for q in (p, twin)]
    for optimizer, q in zip(optimizers, (p, twin), strict=True):
        run(optimizer, q, batches)
    optimizers[0].flush(chunk_rows=7)  # several chunks
    full_flush(optimizers[1], twin)
    assert torch.equal(p, twin)
    assert torch.equal(optimizers[0].state[p]["moments"], optimizers[1].state[twin]["moments"])
    used = torch.unique(torch.cat([ids for ids, _ in batches]))
    assert optimizers[0].moving[p].nonzero().squeeze(1).tolist() == used.tolist()
    assert optimizers[0].state[p]["last_step"][25:].tolist() == [0] * (ROWS - 25)
    # after a load the rows that can move are found again from the moments
    loaded = RowAdam([nn.Parameter(p.detach().clone())], lr=0.01, catch_up=True)
    loaded.load_state_dict(copy.deepcopy(optimizers[0].state_dict()))
    assert torch.equal(next(iter(loaded.moving.values())), optimizers[0].moving[p])


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


def test_untouched_zeros_are_zeros_a_fresh_state_uses_them_and_a_load_reads_the_counters():
    from mtlrec.training.row_adam import untouched_zeros

    for shape, dtype in (([5, 3], torch.float32), ([7], torch.int64), ([0, 4], torch.float32)):
        z = untouched_zeros(shape, dtype)
        assert z.shape == tuple(shape) and z.dtype == dtype and z.is_contiguous()
        assert torch.equal(z, torch.zeros(shape, dtype=dtype))
    z = untouched_zeros([4, 2], torch.float32)
    z[1] = 3.0  # writable, one tensor: views of it see the write
    assert z.sum() == 6.0 and z.view(-1)[2:4].tolist() == [3.0, 3.0]
    with pytest.raises(RuntimeError):  # torch's own error for a bad shape
        untouched_zeros([-1, 2], torch.float32)
    p, twin = params(2)
    optimizer = RowAdam([p], lr=0.01, catch_up=True)
    for name in ("moments", "last_step"):  # over a memory map, not torch's (filled) allocation
        assert not optimizer.state[p][name].untyped_storage().resizable()
    run(optimizer, p, schedule(12, 4, seed=8))
    saved = copy.deepcopy(optimizer.state_dict())
    row = int(optimizer.state[p]["last_step"].nonzero()[0])
    saved["state"][0]["moments"][row] = 0.0  # decayed to exactly 0: still a candidate, not moved
    twin.data.copy_(p.data)
    twin_opt = RowAdam([twin], lr=0.01, catch_up=True)
    twin_opt.load_state_dict(saved)
    assert torch.equal(twin_opt.moving[twin], saved["state"][0]["last_step"].ne(0))
    assert twin_opt.state[twin]["last_step"].dtype == torch.int64  # never cast to float
    optimizer.state[p]["moments"][row] = 0.0
    optimizer.flush()
    twin_opt.flush()
    assert torch.equal(p, twin) and not bool(twin_opt.moving[twin][row])
