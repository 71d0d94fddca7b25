"""Collectives and sharding; every function is the identity (or a no-op) in a single process.

Evaluation is exact under data parallelism: rank r predicts a contiguous block of whole eval
batches (`eval_block`: the same batches as one process), the predictions are all-gathered
(`gather_rows`, padded to the longest block) and concatenated in rank order, i.e. the original row
order, so AUCs are the split's global AUCs, equal to a single-process evaluation of the same
weights. Summed losses are added in another order than in one process (equal to float rounding).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from mtlrec.training.distributed.context import current


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum over ranks, in place (returns `t`)."""
    if current().active:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def average_over_ranks(t: torch.Tensor) -> torch.Tensor:
    """Mean over ranks, in place (returns `t`); the same value on every rank afterwards.

    With equal shards, the mean of the ranks' per-task mean losses (or of their gradients) is the
    mean (gradient) of the whole global batch, for a task computed on every row.
    """
    ctx = current()
    if ctx.active and ctx.world_size > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        t /= ctx.world_size
    return t


def average_tensors(tensors: list[torch.Tensor | None]) -> list[torch.Tensor | None]:
    """Each tensor averaged over ranks with ONE all-reduce (new tensors; Nones stay None). The
    ranks must pass the same shapes in the same order. Identity in a single process."""
    ctx = current()
    present = [t for t in tensors if t is not None]
    if not ctx.active or ctx.world_size == 1 or not present:
        return tensors
    flat = average_over_ranks(torch.cat([t.reshape(-1) for t in present]))
    out: list[torch.Tensor | None] = []
    offset = 0
    for t in tensors:
        if t is None:
            out.append(None)
            continue
        out.append(flat[offset : offset + t.numel()].view_as(t))
        offset += t.numel()
    return out


def average_gradients(params: Iterable[nn.Parameter]) -> None:
    """`.grad` of `params` averaged over ranks in one flat all-reduce. A parameter without a
    gradient (the same on every rank: the graph is the same) keeps None, so the optimizer skips
    it as it would in a single process."""
    params = list(params)
    if not current().active or current().world_size == 1:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    for p, g in zip(params, average_tensors(list(grads)), strict=True):
        if p.grad is not None and g is not None:
            p.grad.copy_(g)


def any_rank(flag: bool) -> bool:
    """True on every rank when it is True on any rank (e.g. a stop request seen by one rank)."""
    ctx = current()
    if not ctx.active:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=ctx.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def any_rank_every(flag: bool, step: int, every: int) -> bool:
    """`any_rank` at every `every`-th step, False in between (the flag is looked at again later);
    a single process just returns the flag. A signal reaches every rank, so the ranks stop
    together within `every` steps instead of paying a collective and a GPU sync per step."""
    if not current().active:
        return flag
    return step % every == 0 and any_rank(flag)


def decide(flag: bool) -> bool:
    """Rank 0's decision, on every rank (early stopping)."""
    ctx = current()
    if not ctx.active:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=ctx.device)
    dist.broadcast(t, src=0)
    return bool(t.item() > 0)


def broadcast_state(module: nn.Module) -> None:
    """Copy rank 0's parameters and buffers of `module` to every rank (in place)."""
    if not current().active:
        return
    with torch.no_grad():
        for t in module.state_dict().values():
            if isinstance(t, torch.Tensor) and t.numel():
                dist.broadcast(t, src=0)


def sum_optional(t: torch.Tensor | None) -> torch.Tensor | None:
    """Sum of a tensor some ranks may not have (a rank with no eval rows has no gate sums)."""
    if not current().active:
        return t
    parts: list[Any] = [None] * current().world_size
    dist.all_gather_object(parts, None if t is None else t.cpu())
    present = [p for p in parts if p is not None]
    if not present:
        return None
    total = torch.stack(present).sum(0)
    return total.to(t.device) if t is not None else total


def shard(global_batch: torch.Tensor) -> torch.Tensor:
    """This rank's part of a global batch of row indices (W near-equal contiguous parts)."""
    ctx = current()
    if ctx.world_size == 1:
        return global_batch
    return torch.tensor_split(global_batch, ctx.world_size)[ctx.rank]


def eval_block(
    n: int, batch_size: int, rank: int | None = None, world: int | None = None
) -> tuple[int, int]:
    """Rows [lo, hi) this rank predicts: a contiguous block of whole eval batches of size
    `batch_size`, so every batch holds the same rows as in a single process."""
    ctx = current()
    rank = ctx.rank if rank is None else rank
    world = ctx.world_size if world is None else world
    batches = math.ceil(n / batch_size)
    lo, hi = batches * rank // world, batches * (rank + 1) // world
    return min(lo * batch_size, n), min(hi * batch_size, n)


def lockstep_batches(n: int, batch_size: int) -> int:
    """The most eval batches any rank's `eval_block` holds: how many forwards every rank makes when
    each forward is a collective (TorchRec's sharded tables; the ranks with fewer real batches pad
    with forwards whose outputs they discard)."""
    world = current().world_size
    blocks = [eval_block(n, batch_size, rank, world) for rank in range(world)]
    return max(math.ceil((hi - lo) / batch_size) for lo, hi in blocks)


def gather_rows(outputs: dict[str, torch.Tensor], n: int) -> dict[str, torch.Tensor]:
    """Each rank's block of rows -> the whole split, in row order (all_gather, padded)."""
    ctx = current()
    if not ctx.active or not outputs:
        return outputs
    names = list(outputs)
    local = torch.stack([outputs[k] for k in names])  # [K, rows of this rank]
    sizes = [torch.zeros(1, dtype=torch.long, device=local.device) for _ in range(ctx.world_size)]
    dist.all_gather(sizes, torch.tensor([local.shape[1]], device=local.device))
    longest = max(int(s.item()) for s in sizes)
    padded = torch.zeros(len(names), longest, dtype=local.dtype, device=local.device)
    padded[:, : local.shape[1]] = local
    parts = [torch.empty_like(padded) for _ in range(ctx.world_size)]
    dist.all_gather(parts, padded)
    whole = torch.cat([p[:, : int(s.item())] for p, s in zip(parts, sizes, strict=True)], dim=1)
    if whole.shape[1] != n:
        raise RuntimeError(f"gathered {whole.shape[1]} rows of predictions, expected {n}")
    return {k: whole[i] for i, k in enumerate(names)}
