"""Data-parallel tables of the torchrec backend (trainer.sharding=data_parallel, or the planner's
choice for a small table): a replica on every rank (docs/distributed.md, "TorchRec backend").

TorchRec gives a replicated table the DENSE compute kernel: a plain parameter whose gradient
DDP averages over the ranks in the backward, and which the fused (in-backward) optimizer does not
train: TorchRec leaves it to the dense optimizer. Here it gets a torch optimizer of the same kind
as the fused one (`replicated_optimizer`), stepped with the dense optimizer after the backward:
row-wise Adagrad, Adagrad and SGD leave a row without gradient unchanged, so updating the whole
table (its gradient is dense) moves the same rows by the same amounts as FBGEMM's fused update of
the looked-up rows. Adam has no such counterpart (its momentum moves every row), so
`adam`/`rowwise_adam` (CUDA) keep the tables sharded.

On the CPU the table is fed one id per bag (`TableCollections.single_id_bags`): FBGEMM 1.8's CPU
kernel behind the DENSE kernel (`dense_embedding_codegen_lookup_function`) pools every bag even
when TorchRec asks for no pooling, so bags of one id are the only ones that come back as one row
per id.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

DATA_PARALLEL = "data_parallel"
# FBGEMM's default eps (SplitTableBatchedEmbeddingBagsCodegen), which the fused tables train with
FBGEMM_EPS = 1e-8


def _rowwise_adagrad(params: list[nn.Parameter], lr: float) -> torch.optim.Optimizer:
    from torchrec.optim import RowWiseAdagrad

    return RowWiseAdagrad(params, lr=lr, eps=FBGEMM_EPS)


# trainer.embedding_optimizer -> the torch optimizer that trains a replicated table like FBGEMM's
REPLICATED_OPTIMIZERS: dict[str, Callable[[list[nn.Parameter], float], torch.optim.Optimizer]] = {
    "auto": _rowwise_adagrad,
    "rowwise_adagrad": _rowwise_adagrad,
    "adagrad": lambda params, lr: torch.optim.Adagrad(params, lr=lr, eps=FBGEMM_EPS),
    "sgd": lambda params, lr: torch.optim.SGD(params, lr=lr),
}
# What the planner may choose with trainer.sharding=auto on the CPU: not row_wise and its hybrids
# (they need nccl).
CPU_SHARDINGS = ["table_wise", "column_wise", DATA_PARALLEL]
# ... and on CUDA when the table optimizer has no replicated counterpart (Adam). In this order
# the planner's ties are broken (torchrec_plan.TIE_ORDER): the fewest pieces first.
CUDA_SHARDED = [
    "table_wise",
    "column_wise",
    "row_wise",
    "table_row_wise",
    "table_column_wise",
    "grid_shard",
]


def planner_types(sharding: str, device: torch.device, optimizer: str) -> list[str] | None:
    """The sharding types the planner may choose from (None: all of them)."""
    if sharding != "auto":
        return [sharding]
    replicable = optimizer in REPLICATED_OPTIMIZERS
    if device.type == "cuda":
        return None if replicable else CUDA_SHARDED
    return CPU_SHARDINGS if replicable else CPU_SHARDINGS[:-1]


def single_id_bag_tables(plan: dict[str, dict[str, Any]], names: list[str], device: torch.device):
    """The tables (indices into `names`) to feed one id per bag: data-parallel ones on the CPU."""
    if device.type != "cpu":
        return set()
    return {j for j, name in enumerate(names) if plan[name]["sharding_type"] == DATA_PARALLEL}


def replicated_optimizer(module: nn.Module, name: str, lr: float) -> torch.optim.Optimizer | None:
    """The optimizer of `module`'s (DistributedModelParallel's) replicated tables: its parameters
    that no in-backward (fused) optimizer trains. None: no replicated table."""
    from torchrec.optim.optimizers import in_backward_optimizer_filter

    params = [p for _, p in in_backward_optimizer_filter(module.named_parameters())]
    return REPLICATED_OPTIMIZERS[name](params, lr) if params else None


def replicated_names(plan: dict[str, Any]) -> list[str]:
    """The tables of a layer's plan that are replicated, sorted."""
    return sorted(name for name, spec in plan.items() if spec["sharding_type"] == DATA_PARALLEL)


def names_text(names: Any, count: int) -> str:
    """A refusal's view of the replicated tables: each layer's names, or their count."""
    if names is None:
        return f"{count} unnamed layer(s)"
    return "; ".join(", ".join(n) for n in names) if names else "none"
