"""RowAdam: Adam on the rows of an embedding table that a batch uses, O(batch) per step.

For each table (a parameter with a sparse gradient from `F.embedding(sparse=True)`), one step:

1. deduplicates the batch's row ids once (`torch.unique(return_inverse=True)`) and sums each
   row's gradient with `index_add_` (no sparse-tensor coalesce);
2. reads both moments of those rows with ONE `index_select` from a packed `[rows, 2 * dim]`
   state tensor (first moment | second moment side by side), so each row's state is one
   contiguous 2*dim run in memory instead of two far-apart ones;
3. updates the moments and the rows (Adam, bias correction with the table's global step count
   t: `m_hat = m / (1 - b1^t)`, `v_hat = v / (1 - b2^t)`) and writes them back with one
   `index_copy_` each.

With `catch_up=False` rows absent from a batch keep their weight and moments (lazy Adam, like
torch.optim.SparseAdam: the same numbers, tested). Lazy Adam moves a rarely used row far less
than dense Adam (which keeps moving it by its decaying momentum for ~1/(1-b1) steps), and scored
0.004-0.008 AUC below it after one epoch.

With `catch_up=True` (what `trainer.embedding_optimizer=sparse_adam` uses) a row that missed
steps L+1..t (L: its `last_step`) first takes those steps the way dense Adam takes them with a
zero gradient: its moments decay as b1^k, b2^k and its weight moves by the sum of dense Adam's
k zero-gradient steps, eps included, in closed form (mtlrec/training/adam_drift.py: exact in the
limits eps -> 0 and v -> 0, within 2e-3 of the step-by-step drift at Adam's first steps and 1e-4
from step 50 on; tables have no weight decay, so that is all a missed step does). The catch-up
runs (a) before a batch's forward for the rows it will read (`catch_up_rows`, called by
MultiOptimizer.catch_up from Trainer.step), so the batch sees dense Adam's weights, (b) in
`step` for rows of the gradient not caught up yet (DDP: rows only another rank used), and (c)
for every row in `flush()` before validation: only rows whose moments are nonzero take
those steps (a row with m = v = 0 does not move in them), so the flush costs O(rows trained
so far), not O(table) (7.9 s for a 20M-row table before). The result is dense Adam up to float rounding and
that bound (tested: 2 ranks, 15 steps, 5.8e-6 apart; optimizer alone, 3000 steps, < 1e-4). The int64
per-row `last_step` is part of the state and resumes exactly.

The state is allocated when the optimizer is built (start-up), not on the first step, as
`untouched_zeros`: on the CPU, fresh pages of an anonymous memory map, which the kernel hands out
zeroed on first touch, one 4 KiB page at a time. Nothing writes the 2.7 GB of a 20M-row table's
state up front (torch.zeros did: 1.0-2.2 s of start-up, and as much again to read a checkpoint);
a step pays one page fault for each page of moments it touches first (the rows it uses), and
the untouched rows of a big table never take memory (peak RSS shrinks by the state's size).
"""

from __future__ import annotations

import math
import mmap
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from mtlrec.training.adam_drift import drift_steps


class RowAdam(torch.optim.Optimizer):
    def __init__(
        self,
        params: Iterable[nn.Parameter],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        catch_up: bool = False,
    ):
        super().__init__(list(params), {"lr": lr, "betas": betas, "eps": eps})
        self.catch_up = catch_up
        self.group_of: dict[nn.Parameter, dict[str, Any]] = {}
        for group in self.param_groups:
            for p in group["params"]:
                self.state[p] = self._fresh_state(p)
                self.group_of[p] = group
        # table -> [rows] bool: every row whose moments may be nonzero (a superset: rows updated
        # since the last flush or load). Only those rows move in a flush; the others have m = v
        # = 0, for which dense Adam's zero-gradient steps change nothing.
        self.moving = {
            p: torch.zeros(p.shape[0], dtype=torch.bool, device=p.device) for p in self.group_of
        }
        # table -> [rows] bool: rows whose weight, moments or last_step changed since the last
        # `take_changed` (what a checkpoint's delta file of the table must hold)
        self.changed = {
            p: torch.zeros(p.shape[0], dtype=torch.bool, device=p.device) for p in self.group_of
        }
        # table -> (its step count, sorted unique rows) of the last catch_up_rows: rows already
        # current when the step comes (not state: a step always follows in the same process)
        self.caught: dict[nn.Parameter, tuple[int, torch.Tensor]] = {}

    @staticmethod
    def _fresh_state(p: torch.Tensor) -> dict[str, torch.Tensor]:
        rows, dim = p.shape
        return {
            "step": torch.zeros((), dtype=torch.int64),
            "moments": untouched_zeros([rows, 2 * dim], p.dtype, p.device),
            # the global step at which each row was last brought up to date
            "last_step": untouched_zeros([rows], torch.int64, p.device),
        }

    @torch.no_grad()
    def step(self, closure: Any = None) -> None:  # type: ignore[override]
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if not p.grad.is_sparse:
                    raise RuntimeError("RowAdam takes sparse gradients (F.embedding sparse=True)")
                state = self.state[p]
                state["step"] += 1
                rows, grad = unique_rows(p.grad)
                self._update_rows(p, state, group, rows, grad)

    def _update_rows(
        self,
        p: torch.Tensor,
        state: dict[str, torch.Tensor],
        group: dict[str, Any],
        rows: torch.Tensor,
        grad: torch.Tensor,
    ) -> None:
        b1, b2 = group["betas"]
        t = int(state["step"])
        dim = p.shape[1]
        packed = state["moments"].index_select(0, rows)
        m, v = packed[:, :dim], packed[:, dim:]
        weight = p.index_select(0, rows)
        if self.catch_up:
            caught = self.caught.pop(p, None)  # type: ignore[call-overload]
            # The rows were all caught up before this batch's forward (one process): nothing
            # missed. Else (DDP: rows only another rank used) catch them up here.
            if caught is None or caught[0] != t - 1 or not torch.equal(caught[1], rows):
                self._drift(weight, m, v, state["last_step"].index_select(0, rows), t - 1, group)
            state["last_step"].index_fill_(0, rows, t)
        self.moving[p].index_fill_(0, rows, True)  # type: ignore[index]
        self.changed[p].index_fill_(0, rows, True)  # type: ignore[index]
        m.mul_(b1).add_(grad, alpha=1 - b1)
        v.mul_(b2).addcmul_(grad, grad, value=1 - b2)
        denom = (v / (1 - b2**t)).sqrt_().add_(group["eps"])
        weight.addcdiv_(m, denom, value=-group["lr"] / (1 - b1**t))
        p.index_copy_(0, rows, weight)
        state["moments"].index_copy_(0, rows, packed)

    @staticmethod
    def _drift(
        weight: torch.Tensor,
        m: torch.Tensor,
        v: torch.Tensor,
        last: torch.Tensor,
        upto: int,
        group: dict[str, Any],
    ) -> None:
        """Dense Adam's zero-gradient steps last+1..upto of each row, in place (the docstring)."""
        b1, b2 = group["betas"]
        steps = drift_steps(last, upto, b1, b2, group["eps"], v)
        weight.sub_(m * steps.to(m.dtype), alpha=group["lr"])
        k = (upto - last).to(torch.float64).unsqueeze(1)  # 0 for a row used at the step before
        m.mul_((b1**k).to(m.dtype))
        v.mul_((b2**k).to(v.dtype))

    @torch.no_grad()
    def catch_up_rows(self, p: nn.Parameter, ids: torch.Tensor) -> None:
        """Before a forward: bring the rows `ids` (any order, repeats) of table `p` up to the
        current step, so the batch reads the weights dense Adam would have (catch_up only)."""
        if not self.catch_up or p not in self.group_of:
            return
        state, dim = self.state[p], p.shape[1]
        rows = torch.unique(ids)
        packed = state["moments"].index_select(0, rows)
        weight = p.index_select(0, rows)
        t = int(state["step"])
        last = state["last_step"].index_select(0, rows)
        self._drift(weight, packed[:, :dim], packed[:, dim:], last, t, self.group_of[p])
        p.index_copy_(0, rows, weight)
        state["moments"].index_copy_(0, rows, packed)
        state["last_step"].index_fill_(0, rows, t)
        self.changed[p].index_fill_(0, rows, True)
        self.caught[p] = (t, rows)

    @torch.no_grad()
    def flush(self, chunk_rows: int = 1 << 18) -> None:
        """Bring every row up to the current step (catch_up only), once per epoch: O(rows with
        nonzero moments), never O(table) (rows with m = v = 0 do not move in dense Adam's
        zero-gradient steps; their last_step is left as it is), in chunks so the temporaries
        stay small."""
        if not self.catch_up:
            return
        for group in self.param_groups:
            for p in group["params"]:
                state, moving = self.state[p], self.moving[p]
                t, dim = int(state["step"]), p.shape[1]
                for candidates in moving.nonzero().squeeze(1).split(chunk_rows):
                    packed = state["moments"].index_select(0, candidates)
                    live = packed.ne(0).any(1)
                    moving.index_fill_(0, candidates[~live], False)  # decayed to 0 (or never set)
                    rows, packed = candidates[live], packed[live]
                    weight = p.index_select(0, rows)
                    last = state["last_step"].index_select(0, rows)
                    self._drift(weight, packed[:, :dim], packed[:, dim:], last, t, group)
                    p.index_copy_(0, rows, weight)
                    state["moments"].index_copy_(0, rows, packed)
                    state["last_step"].index_fill_(0, rows, t)
                    self.changed[p].index_fill_(0, rows[last < t], True)  # rows that moved

    def take_changed(self, p: nn.Parameter) -> torch.Tensor:
        """The sorted rows of table `p` changed since the last call (or the load), and forget
        them: O(table) bits scanned, O(rows changed) returned."""
        changed = self.changed[p]
        rows = changed.nonzero().squeeze(1)
        changed.index_fill_(0, rows, False)
        return rows

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state_dict = {
            **state_dict,
            "state": {k: from_sparse_adam(v) for k, v in state_dict["state"].items()},
        }
        # torch casts every state tensor but "step" to the parameter's dtype: the int64
        # last-step counters are kept out of its hands (no float copy) and put back as they were.
        counters = {k: v["last_step"] for k, v in state_dict["state"].items()}
        state_dict["state"] = {
            k: {n: t for n, t in v.items() if n != "last_step"}
            for k, v in state_dict["state"].items()
        }
        super().load_state_dict(state_dict)
        for index, p in enumerate(p for g in self.param_groups for p in g["params"]):
            state = self.state[p]
            state["last_step"] = counters[index].to(p.device)
            self.moving[p] = self._maybe_moving(state)
            self.changed[p].zero_()  # the state is what was loaded: nothing changed since

    def _maybe_moving(self, state: dict[str, torch.Tensor]) -> torch.Tensor:
        """At load: a superset of the rows whose moments may be nonzero. With catch_up, every
        row a step, catch-up or flush wrote has last_step >= 1, and a row never written has
        m = v = 0: reading the 8-byte counters (O(table), once) finds them without reading the
        moments, 16x the bytes. Without catch_up (last_step stays 0), the moments themselves."""
        if self.catch_up:
            return state["last_step"].ne(0)
        return state["moments"].ne(0).any(1)


def from_sparse_adam(state: dict[str, Any]) -> dict[str, Any]:
    """A table's state as torch.optim.SparseAdam saved it (checkpoints from before RowAdam) in
    RowAdam's layout: moments packed side by side, every row current at the saved step."""
    if "moments" in state or "exp_avg" not in state:
        return state
    step = torch.as_tensor(state["step"], dtype=torch.int64)
    moments = torch.cat([state["exp_avg"], state["exp_avg_sq"]], 1)
    last = torch.full((moments.shape[0],), int(step), dtype=torch.int64)
    return {"step": step, "moments": moments, "last_step": last}


def unique_rows(grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(sorted unique row ids [n], their summed gradient rows [n, dim]) of a sparse gradient."""
    if grad.is_coalesced():
        return grad.indices()[0], grad.values()
    # _indices/_values: the raw (duplicated) entries; indices() refuses an uncoalesced tensor.
    rows, inverse = torch.unique(grad._indices()[0], return_inverse=True)
    values = grad._values()
    summed = values.new_zeros(rows.shape[0], values.shape[1]).index_add_(0, inverse, values)
    return rows, summed


def untouched_zeros(
    shape: list[int], dtype: torch.dtype, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """torch.zeros(shape, dtype), on the CPU without writing a byte: a tensor over an anonymous
    private memory map, whose pages the kernel supplies zeroed on first touch. (torch.zeros
    fills its memory, page-faulting all of it in: 1.4 s for a 20M x 32 float table. NumPy's
    calloc would ask for transparent huge pages, and 2 MiB pages turn a step's scattered rows
    into a fill of nearly the whole table.) Elsewhere: torch.zeros."""
    if torch.device(device).type != "cpu":
        return torch.zeros(shape, dtype=dtype, device=device)
    if not all(isinstance(size, int) and size > 0 for size in shape):  # empty, or torch's error
        return torch.zeros(shape, dtype=dtype)
    nbytes = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
    # the tensor holds a reference to the map: unmapped when the last view of it goes
    return torch.frombuffer(mmap.mmap(-1, nbytes), dtype=dtype).view(shape)
