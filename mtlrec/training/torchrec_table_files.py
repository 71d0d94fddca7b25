"""TorchRec's fused tables of a one-process run in checkpoints as base + delta files.

The checkpoint of a `trainer.embedding_backend=torchrec` run in one process holds each table and
its fused optimizer state (rowwise_adagrad's per-row momentum, adagrad's per-value one; sgd has
none) gathered into full tensors: O(vocabulary) to copy, write and hash at every checkpoint. A
table of at least `checkpoint.table_files_min_rows` rows goes to checkpoints/tables/ instead,
through the native path's machinery (training/table_files.py, as a `TrackedTable`): a base file
at the first checkpoint, then per checkpoint the rows changed since the previous one.

- Which rows changed: FBGEMM's fused optimizer updates, in the backward, exactly the rows the
  forward looked up, so each training forward marks the ids it looks up per table (a bool per
  row; a row looked up with a zero gradient is marked too: a superset, harmless).
- No gather: the layer's state_dict returns the tracked tables' own storage (the one local
  shard of a one-process run: a view of FBGEMM's weights), as a native layer returns its
  parameters, and the optimizer's state_dict the fused state's own tensors, so TableFiles finds
  them by identity, as it finds RowAdam's, and writes the changed rows only; a checkpoint's
  best weights of the best epoch are those tensors too (references to the newest files).
  Untracked tables are copied (gathered) as before.

Resume and every reader assemble the full tensors (checkpoint.load_checkpoint): the checkpoint
is the ordinary one. Several ranks keep their own path (DCP folders, torchrec_checkpoint.py);
tables on CUDA stay whole in last.pt, as the native path's do.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from mtlrec.models.seeded_init import SeededInit
from mtlrec.models.torchrec_embedding import TorchRecFieldEmbedding, feature_name
from mtlrec.training.torchrec_backend import gather_full


class FusedTableRows:
    """One fused table of a one-process run as TableFiles tracks it (table_files.TrackedTable)."""

    def __init__(self, module: nn.Module, j: int, fused_keys: list[str], fused: Any, seeded: Any):
        self.module, self.j, self.fused_keys, self.fused = module, j, fused_keys, fused
        self.seeded: SeededInit | None = seeded  # the native table's init (models/seeded_init)
        self.rows = int(self.weight().shape[0])
        self.changed = torch.zeros(self.rows, dtype=torch.bool)

    def weight(self) -> torch.Tensor:
        """The table's own storage (not a copy)."""
        state = self.module.state_dict()[
            f"collections.{self.j}.embeddings.{feature_name(self.j)}.weight"
        ]
        return _whole_local(state)

    def states(self) -> dict[str, torch.Tensor]:
        """{FusedTables key: its own tensor} of this table's per-row optimizer state."""
        local = self.fused.local_state()
        return {k: _whole_local(local[k]) for k in self.fused_keys}

    def fresh(self) -> bool:
        """The fused state is all zeros (as FBGEMM starts it)."""
        return all(not t.any() for t in self.states().values())

    def tensors(self) -> list[tuple[str, torch.Tensor]]:
        return [("weight", self.weight()), *self.states().items()]

    def mark(self, ids: torch.Tensor) -> None:
        self.changed.index_fill_(0, ids.reshape(-1), True)

    def take_changed(self) -> torch.Tensor:
        rows = self.changed.nonzero().squeeze(1)
        self.changed.index_fill_(0, rows, False)
        return rows


class _MarkingLookup:
    """The layer's lookup, marking the ids each training forward looks up per tracked table."""

    def __init__(
        self, layer: TorchRecFieldEmbedding, lookup: Any, tables: dict[int, FusedTableRows]
    ):
        self.layer, self.lookup, self.tables = layer, lookup, tables

    def __call__(self, ids: list[torch.Tensor]) -> list[torch.Tensor]:
        if self.layer.training:
            for j, table in self.tables.items():
                table.mark(ids[j])
        return self.lookup(ids)


def fused_table_rows(
    model: nn.Module, optimizer: Any, min_rows: int | None
) -> list[FusedTableRows]:
    """The tables of `model` (sharded in one process) of at least `min_rows` rows, tracked: from
    now on each training forward marks the rows it looks up. [] with several ranks, without
    TorchRec tables or with min_rows None."""
    sharded = getattr(model, "sharded_tables", None)
    fused = getattr(optimizer, "fused", None)
    if min_rows is None or not sharded or fused is None:
        return []
    if dist.is_initialized() and dist.get_world_size() > 1:
        return []
    keys = list(fused.local_state())
    out: list[FusedTableRows] = []
    for i, s in enumerate(sharded):
        tables: dict[int, FusedTableRows] = {}
        for j, (rows, _) in enumerate(s.layer.table_shapes):
            param = f"{i}/collections.{j}.embeddings.{feature_name(j)}.weight/"
            mine = [k for k in keys if k.startswith(param)]
            seeds = getattr(s.layer, "initial_seeds", [])
            table = FusedTableRows(s.module, j, mine, fused, seeds[j] if j < len(seeds) else None)
            if rows >= min_rows and _fused(table, rows):
                tables[j] = table
        if tables:
            s.layer.__dict__["lookup"] = _MarkingLookup(s.layer, s.layer.lookup, tables)
            s.layer.read_tables = _reader(s.module, tables)
            out += tables.values()
    if out:
        fused.state_dict = lambda: _fused_state(fused, out)  # over FusedTables.state_dict
    return out


def _fused(table: FusedTableRows, rows: int) -> bool:
    """The table is FBGEMM's (a sharded table: a replicated one has a torch optimizer, which may
    move rows no step looked up) and each of its state tensors has a row per table row (else:
    kept whole, gathered)."""
    state = table.module.state_dict()[
        f"collections.{table.j}.embeddings.{feature_name(table.j)}.weight"
    ]
    sharded = hasattr(state, "local_shards")
    on_cpu = table.weight().device.type == "cpu"  # as the native path: CUDA tables stay whole
    return sharded and on_cpu and all(t.shape[0] == rows for _, t in table.tensors())


def _whole_local(value: Any) -> torch.Tensor:
    """The tensor a one-process ShardedTensor holds (its one shard: the whole value)."""
    shards = value.local_shards() if hasattr(value, "local_shards") else None
    if shards is None:
        return value
    if len(shards) != 1 or list(shards[0].tensor.shape) != list(value.size()):
        raise RuntimeError("a one-process table is expected to hold one whole shard")
    return shards[0].tensor


def _reader(module: nn.Module, own: dict[int, FusedTableRows]) -> Any:
    def read_tables() -> list[torch.Tensor]:
        state = module.state_dict()
        out = []
        for j in range(len(state)):  # one entry per table (torchrec_backend._table_states)
            if j in own:
                out.append(own[j].weight())
            else:
                value = _whole_local(state[f"collections.{j}.embeddings.{feature_name(j)}.weight"])
                out.append(value.detach().clone())
        return out

    return read_tables


def _fused_state(fused: Any, tracked: list[FusedTableRows]) -> dict[str, Any]:
    """The fused state dict with the tracked tables' tensors their own, the rest gathered."""
    own = {k: v for t in tracked for k, v in t.states().items()}
    rest = gather_full({k: v for k, v in fused.local_state().items() if k not in own})
    return dict(sorted({**rest, **own}.items()))
