"""What a run needs in memory before its first batch, estimated before anything is allocated.

The model is built on the meta device (shapes only: no memory, no init cost), so sizes that
cannot be allocated (`model.embedding_dim=1000000000`, `model.num_experts=1000000`,
`model.tower_dims=[100000,100000]`) are refused with the numbers instead of failing inside
torch; the rows of a generated dataset (`dataset.num_rows=1000000000000`) likewise. Counted:
every parameter, the dense parameters' gradients and Adam's two moments, the embedding tables'
optimizer state (training/optimizers.table_bytes) and the split tensors of generated rows.
Activations are not counted: the estimate is a floor, so what it refuses never fits.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from mtlrec.data.spec import DatasetSpec, TaskSpec
from mtlrec.errors import MtlrecError
from mtlrec.models import ModelSettings, build_model
from mtlrec.training.optimizers import (
    EmbeddingOptimizer,
    embedding_tables,
    free_memory,
    table_bytes,
)

GIB = 2**30
DENSE_COPIES = 3  # a gradient and Adam's two moments per dense parameter


@dataclass(frozen=True)
class Footprint:
    parameters: int  # bytes
    optimizer: int  # gradients + optimizer state, bytes
    data: int = 0  # split tensors of generated rows, bytes

    @property
    def total(self) -> int:
        return self.parameters + self.optimizer + self.data


def model_footprint(
    model_cfg: ModelSettings | Mapping[str, Any],
    spec: DatasetSpec,
    selected: tuple[TaskSpec, ...],
    embedding_optimizer: EmbeddingOptimizer,
    tables_sharded: bool = False,
) -> Footprint:
    """Parameters and optimizer state of the configured model, built on the meta device.
    `tables_sharded` (`tables_split_over_ranks`): the embedding tables and their state are left
    out: no rank holds them whole, and TorchRec's planner checks each rank's part."""
    with torch.device("meta"):
        model, _ = build_model(model_cfg, spec, selected)
    tables, table_state = (0, 0) if tables_sharded else table_bytes(model, embedding_optimizer)
    in_tables = {id(p) for t in embedding_tables(model) for p in t.parameters()}
    dense = sum(p.numel() * p.element_size() for p in model.parameters() if id(p) not in in_tables)
    return Footprint(tables + dense, table_state + DENSE_COPIES * dense)


def row_bytes(spec: DatasetSpec) -> int:
    """Bytes of one row in memory: int64 ids, float32 dense values and labels."""
    layout = spec.layout
    return 8 * layout.sparse_width + 4 * (layout.dense_width + len(spec.labels))


def check_footprint(need: Footprint, free_bytes: float, where: str, model_name: str) -> str:
    """One line with the numbers when `need` exceeds `free_bytes`; else a summary."""
    parts = (
        f"parameters {need.parameters / GIB:,.2f} GiB + gradients and optimizer state "
        f"{need.optimizer / GIB:,.2f} GiB"
        + (f" + data {need.data / GIB:,.2f} GiB" if need.data else "")
    )
    if need.total <= free_bytes:
        return parts
    raise MtlrecError(
        f"the run (model {model_name}) needs at least {need.total / GIB:,.2f} GiB ({parts}) but "
        f"{free_bytes / GIB:,.2f} GiB are free on {where}; make it smaller "
        "(model.embedding_dim, model.num_experts, model.expert_dims, model.tower_dims, "
        "dataset.num_rows) or use a device with more memory"
    )


def tables_split_over_ranks(trainer_cfg: Any, ranks: int, device: torch.device) -> bool:
    """TorchRec shards the tables over several ranks of their own GPUs (trainer.embedding_backend
    =torchrec, not forced to replicate them): the planner checks each rank's part against its
    budget. On the CPU every rank's shards live in the one host's memory, which must hold the
    whole tables (their shards add up to them): they are counted, once, as for one rank."""
    backend, sharding = trainer_cfg.embedding_backend, trainer_cfg.sharding
    on_gpus = device.type != "cpu"
    return on_gpus and backend == "torchrec" and ranks > 1 and sharding != "data_parallel"


def check_model_memory(
    model_cfg: ModelSettings,
    spec: DatasetSpec,
    selected: tuple[TaskSpec, ...],
    trainer_cfg: Any,
    device: torch.device,
    ranks: int = 1,
) -> None:
    """The run's model (parameters + optimizer state) against `device`'s free memory, before
    the model is allocated (its tables left out when `tables_split_over_ranks`)."""
    split = tables_split_over_ranks(trainer_cfg, ranks, device)
    need = model_footprint(model_cfg, spec, selected, trainer_cfg.embedding_optimizer, split)
    check_footprint(need, free_memory(device), str(device), model_cfg.name)
