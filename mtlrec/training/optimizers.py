"""The optimizer of a run: fused Adam for dense parameters, a row-wise one for large embeddings.

`trainer.embedding_optimizer` picks how the embedding tables train:

- `adam`: the tables are ordinary parameters of the fused (Adam|AdamW) optimizer. Every step
  computes a dense gradient for the whole table and updates every row: O(vocabulary) per step.
- `sparse_adam`: RowAdam (mtlrec/training/row_adam.py). The backward pass yields a sparse
  gradient holding only the rows the batch used; each step reads, updates and writes only those
  rows (both moments packed in one [rows, 2 * dim] tensor): O(batch) per step. A row absent from
  a batch is not touched at that step; before a batch reads it (`MultiOptimizer.catch_up`,
  called by Trainer.step), and for every row at the end of an epoch (`flush`, before
  validation), it first takes the steps dense Adam would have taken with a zero gradient
  (moments decayed, the weight moved by the decaying momentum, each missed step's bias
  correction). So it trains as dense Adam does, up to float rounding and Adam's eps in those
  zero-gradient steps (tests/training/test_ddp_sparse.py, test_sparse_row_adam.py), at O(batch)
  per step plus O(table) once per epoch.
- `adagrad`: row-wise Adagrad (torch.optim.Adagrad on sparse gradients): per-row squared-gradient
  sums, rows absent from a batch unchanged (Adagrad has no momentum: this is exact).
- `auto` (default): `sparse_adam` for tables of more than `SPARSE_FROM_ROWS` rows, `adam` for the
  rest, and `adam` for every table under the nccl backend (no sparse all-reduce there). Measured (docs/performance.md, scripts/bench_vocab_steps.py, CPU time per step): the
  dense fused update is faster up to ~70k rows, the row-wise one from ~120k rows on; the AUC of
  both matches within 0.002 (scripts/sparse_parity.py), so speed alone decides.

Weight decay never applies to sparse tables (RowAdam has none; the dense path gives the tables
`embedding_weight_decay`, 0 by default, so both agree); `trainer.embedding_l2` is a
loss penalty on the rows a batch uses, so it works with every choice.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from typing import Any, Literal

import torch
from torch import nn

from mtlrec.errors import MtlrecError
from mtlrec.training.row_adam import RowAdam

# The last three: trainer.embedding_backend=torchrec only (FBGEMM's fused optimizers).
EmbeddingOptimizer = Literal[
    "auto", "adam", "sparse_adam", "adagrad", "rowwise_adagrad", "sgd", "rowwise_adam"
]
SPARSE_FROM_ROWS = 100_000
# [rows, dim] tensors of state (the row-wise ones keep one number a row: counted as none)
STATE_TENSORS = {
    "adam": 2,
    "sparse_adam": 2,
    "adagrad": 1,
    "rowwise_adagrad": 0,
    "sgd": 0,
    "rowwise_adam": 1,
}


def embedding_tables(model: nn.Module) -> list[nn.Embedding]:
    return [m for m in model.modules() if isinstance(m, nn.Embedding)]


def table_choice(table: nn.Embedding, choice: EmbeddingOptimizer) -> str:
    if choice == "auto":
        return "sparse_adam" if table.num_embeddings > SPARSE_FROM_ROWS else "adam"
    return choice


class MultiOptimizer(torch.optim.Optimizer):
    """Several optimizers stepped as one (dense fused Adam + a sparse one for the tables).

    `param_groups` lists every group; `add_param_group` goes to the first (dense) optimizer, so a
    balancer's learned weights train with Adam. The state dict keeps one entry per optimizer.
    """

    def __init__(self, optimizers: list[torch.optim.Optimizer]):
        self.optimizers = optimizers
        # torch.optim.Optimizer.__init__ is not called: the parts hold the state.
        self.defaults = optimizers[0].defaults

    @property
    def param_groups(self) -> list[dict[str, Any]]:  # type: ignore[override]
        return [g for opt in self.optimizers for g in opt.param_groups]

    @property
    def state(self) -> Any:  # type: ignore[override]
        merged: dict[Any, Any] = {}
        for opt in self.optimizers:
            merged.update(opt.state)
        return merged

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        self.optimizers[0].add_param_group(param_group)

    def zero_grad(self, set_to_none: bool = True) -> None:
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=set_to_none)

    @torch.no_grad()
    def step(self, closure: Any = None) -> None:  # type: ignore[override]
        for opt in self.optimizers:
            opt.step()

    def catch_up(self, model: nn.Module, sparse: torch.Tensor) -> None:
        """Before a batch's forward: the rows it will read, brought up to date (RowAdam)."""
        row_adams = [o for o in self.optimizers if isinstance(o, RowAdam) and o.catch_up]
        if not row_adams:
            return
        for module in model.modules():
            rows_of = getattr(module, "rows_used", None)  # per table: (table, row ids of a batch)
            if not callable(rows_of):
                continue
            for table, ids in rows_of(sparse):
                for optimizer in row_adams:
                    optimizer.catch_up_rows(table.weight, ids)

    def flush(self) -> None:
        """Bring lazily updated rows up to date (RowAdam catch_up) before they are evaluated."""
        for opt in self.optimizers:
            if isinstance(opt, RowAdam):
                opt.flush()

    def state_dict(self) -> dict[str, Any]:
        return {"optimizers": [opt.state_dict() for opt in self.optimizers]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        parts = state_dict.get("optimizers")
        if parts is None:  # a checkpoint of one plain optimizer (before the sparse path)
            parts = [state_dict]
        if len(parts) != len(self.optimizers):
            raise ValueError(
                f"the checkpoint has {len(parts)} optimizer(s), this run {len(self.optimizers)} "
                "(was trainer.embedding_optimizer changed?)"
            )
        for opt, part in zip(self.optimizers, parts, strict=True):
            opt.load_state_dict(part)


def dense_optimizer(name: str, groups: list[dict[str, Any]], lr: float) -> torch.optim.Optimizer:
    cls = torch.optim.AdamW if name == "adamw" else torch.optim.Adam
    try:
        # The fused kernel updates every parameter in one pass: ~5-9x faster steps on CPU than
        # the default per-tensor loop (a large share of a small model's step time).
        return cls(groups, lr=lr, fused=True)
    except (RuntimeError, TypeError):  # device or torch version without a fused kernel
        return cls(groups, lr=lr)


def build_optimizer(
    model: nn.Module,
    name: str,
    lr: float,
    weight_decay: float,
    embedding_optimizer: EmbeddingOptimizer = "adam",
    embedding_weight_decay: float = 0.0,
    embedding_lr: float | None = None,
    separate_tables: bool = False,
) -> MultiOptimizer:
    """Dense parameters on (fused) Adam/AdamW; each embedding table on its chosen optimizer.

    Tables chosen for a sparse optimizer get `sparse=True`, so their backward pass produces sparse
    gradients (the model's embedding layer must call the module, or F.embedding(sparse=True)).
    The tables train at `embedding_lr` (None: `lr`); with `separate_tables` the dense-path tables
    get a (fused) Adam of their own, so an lr schedule of their own can drive it
    (mtlrec.training.schedule). The first optimizer always holds the dense parameters.
    """
    table_lr = lr if embedding_lr is None else embedding_lr
    # A frozen parameter (init.freeze: requires_grad False) is in no group: never updated.
    tables = [t for t in embedding_tables(model) if t.weight.requires_grad]
    if embedding_optimizer == "auto" and nccl_ranks():
        embedding_optimizer = "adam"  # nccl has no sparse all-reduce (docs/distributed.md)
    by_choice: dict[str, list[nn.Parameter]] = {"adam": [], "sparse_adam": [], "adagrad": []}
    for table in tables:
        choice = table_choice(table, embedding_optimizer)
        table.sparse = choice != "adam"
        by_choice[choice].extend(table.parameters())
    in_tables = {id(p) for t in tables for p in t.parameters()}
    rest = [p for p in model.parameters() if id(p) not in in_tables and p.requires_grad]
    groups: list[dict[str, Any]] = [{"params": rest, "weight_decay": weight_decay}]
    table_group = {"params": by_choice["adam"], "weight_decay": embedding_weight_decay}
    if by_choice["adam"] and not separate_tables:
        groups.append({**table_group, "lr": table_lr})
    parts = [dense_optimizer(name, groups, lr)]
    if by_choice["adam"] and separate_tables:
        parts.append(dense_optimizer(name, [table_group], table_lr))
    if by_choice["sparse_adam"]:
        parts.append(RowAdam(by_choice["sparse_adam"], lr=table_lr, catch_up=True))
    if by_choice["adagrad"]:
        parts.append(torch.optim.Adagrad(by_choice["adagrad"], lr=table_lr))
    return MultiOptimizer(parts)


def nccl_ranks() -> bool:
    from mtlrec.training.distributed.context import current

    return current().backend == "nccl"


def has_sparse_grads(params: Iterable[nn.Parameter]) -> bool:
    return any(p.grad is not None and p.grad.is_sparse for p in params)


def clip_grad_norm(params: Iterable[nn.Parameter], max_norm: float) -> torch.Tensor:
    """torch's clip_grad_norm_ for a mix of dense and sparse gradients (the same total norm)."""
    params = [p for p in params if p.grad is not None]
    if not has_sparse_grads(params):
        return torch.nn.utils.clip_grad_norm_(params, max_norm)
    squares = []
    for p in params:
        grad = p.grad
        assert grad is not None
        if grad.is_sparse:
            grad = grad.coalesce()  # duplicate rows add up before the norm
            p.grad = grad
            squares.append(grad.values().pow(2).sum())
        else:
            squares.append(grad.pow(2).sum())
    total = torch.stack(squares).sum().sqrt()
    scale = (max_norm / (total + 1e-6)).clamp(max=1.0)
    for p in params:
        assert p.grad is not None
        p.grad.mul_(scale)
    return total


def table_bytes(model: nn.Module, embedding_optimizer: EmbeddingOptimizer) -> tuple[int, int]:
    """(bytes of the embedding tables, bytes of their optimizer state), as allocated at start."""
    weights = state = 0
    for table in embedding_tables(model):
        size = table.weight.numel() * table.weight.element_size()
        weights += size
        choice = table_choice(table, embedding_optimizer)
        state += size * STATE_TENSORS[choice]
        if choice == "sparse_adam":  # RowAdam's int64 last-step counter per row
            state += table.num_embeddings * 8
    return weights, state


def check_fits(
    model: nn.Module, embedding_optimizer: EmbeddingOptimizer, free_bytes: int, where: str
) -> str:
    """One line with the numbers if tables + optimizer state exceed `free_bytes`; else a summary."""
    weights, state = table_bytes(model, embedding_optimizer)
    need = weights + state
    summary = (
        f"embedding tables {weights / 2**20:,.1f} MiB + optimizer state {state / 2**20:,.1f} MiB"
    )
    if need > free_bytes:
        raise MtlrecError(
            f"{summary} = {need / 2**30:.2f} GiB do not fit in the {free_bytes / 2**30:.2f} GiB "
            f"free on {where}; use feature hashing (hash_buckets), a smaller model.embedding_dim, "
            "trainer.embedding_optimizer=adagrad (one state tensor instead of two) or device=cpu"
        )
    return summary


def free_memory(device: torch.device) -> int:
    """Free bytes on `device`: the GPU's free memory, or the host's available memory."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as f:
            info = dict(line.split(":", 1) for line in f)
        return int(info["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return math.inf  # type: ignore[return-value]  # unknown: never refuse


def sparse_parameters(model: nn.Module) -> Iterator[nn.Parameter]:
    for table in embedding_tables(model):
        if table.sparse:
            yield from table.parameters()
