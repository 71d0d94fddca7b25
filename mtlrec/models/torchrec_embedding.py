"""The embedding layer on TorchRec (trainer.embedding_backend=torchrec): the same fields, rows and
pooling as `FieldEmbedding`, its tables held by TorchRec `EmbeddingCollection`s.

Each fused table of `FieldEmbedding` (one per embedding size) becomes one `EmbeddingCollection`
with one table and one feature (TorchRec wants one size per collection). A batch makes ONE lookup
per table: a `KeyedJaggedTensor` with, for every row of the batch, every id that row reads from
the table (its single ids, each bag/sequence position, each target-attention query), so a
sharded table does one input and one output all-to-all a step and its fused optimizer updates
each row once. The rows come back unpooled ([rows x ids, dim]) and FieldEmbedding's own pooling,
target attention and feature groups run on them unchanged: the towers/experts see the same
vectors as with the native layer, given the same table weights (tests/models/test_torchrec_embedding.py).

The tables are not parameters of the model (the dense optimizer and DDP never see them):
`mtlrec.training.torchrec_backend` shards them with `DistributedModelParallel`, whose FBGEMM
kernels apply the table optimizer inside the backward pass. `state_dict()` writes and
`load_state_dict()` reads the ordinary layout (`<prefix>tables.<j>.weight`, full tables), so a
checkpoint is the native one and evaluate/predict/export load it without TorchRec.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from mtlrec.models.features import FieldEmbedding
from mtlrec.models.seeded_init import SeededInit, deferred_init_of, seeded_init_of

TableReader = Callable[[], list[torch.Tensor]]
TableWriter = Callable[[list[torch.Tensor]], None]


def feature_name(table: int) -> str:
    return f"table_{table}"


class TableCollections(nn.Module):
    """One TorchRec EmbeddingCollection per table, built on the meta device (DMP allocates each
    rank's shards); forward(ids per table [B, n_j]) -> rows per table [B, n_j, dim].

    A table in `single_id_bags` is fed every id as a bag of its own ([B x n_j] bags of 1 instead
    of B bags of n_j): FBGEMM's CPU kernel for data-parallel tables (the DENSE compute kernel)
    sums each bag whatever the pooling asked, so only bags of one id give one row per id
    (torchrec_backend.shard_layer sets it; docs/distributed.md)."""

    def __init__(self, shapes: list[tuple[int, int]]):
        super().__init__()
        from torchrec import EmbeddingCollection, EmbeddingConfig

        self.collections = nn.ModuleList(
            EmbeddingCollection(
                tables=[
                    EmbeddingConfig(
                        name=feature_name(j),
                        embedding_dim=dim,
                        num_embeddings=rows,
                        feature_names=[feature_name(j)],
                    )
                ],
                device=torch.device("meta"),
            )
            for j, (rows, dim) in enumerate(shapes)
        )
        # Tables looked up with one id per bag (set by the sharding, `single_id_bags`).
        self.single_id_bags: set[int] = set()

    def forward(self, ids: list[torch.Tensor]) -> list[torch.Tensor]:
        from torchrec import KeyedJaggedTensor

        out = []
        for j, (collection, table_ids) in enumerate(zip(self.collections, ids, strict=True)):
            batch, width = table_ids.shape
            # Each row's ids as one bag, or each id as its own bag (same values, same output rows)
            bags, size = (batch * width, 1) if j in self.single_id_bags else (batch, width)
            kjt = KeyedJaggedTensor(
                keys=[feature_name(j)],
                values=table_ids.reshape(-1),
                lengths=torch.full((bags,), size, dtype=torch.int64, device=table_ids.device),
            )
            rows = collection(kjt)[feature_name(j)].values()
            out.append(rows.view(batch, width, -1))
        return out


class TorchRecFieldEmbedding(FieldEmbedding):
    """FieldEmbedding whose tables live in TorchRec collections (see the module docstring).
    Built from a native layer by `from_native`, which keeps its initial weights for the shards."""

    lookup: Callable[[list[torch.Tensor]], list[torch.Tensor]]
    collections: TableCollections
    initial_weights: list[torch.Tensor]
    initial_seeds: list[SeededInit | None]
    initial_draws: list[SeededInit | None]  # a meta table's init: each rank draws its shards
    table_shapes: list[tuple[int, int]]
    read_tables: TableReader | None
    write_tables: TableWriter | None
    _fetched: dict[int, list[torch.Tensor]]
    lockstep: bool  # sharded over several ranks: every rank must make every lookup (evaluator)
    tables_in_state: bool  # False: state_dict leaves the tables out (a DCP checkpoint holds them)

    @classmethod
    def from_native(cls, native: FieldEmbedding) -> TorchRecFieldEmbedding:
        layer = cls.__new__(cls)
        layer.__dict__.update(native.__dict__)
        layer._modules = {k: v for k, v in native._modules.items() if k != "tables"}
        layer._parameters, layer._buffers = dict(native._parameters), dict(native._buffers)
        weights = [t.weight.detach() for t in native.tables]  # type: ignore[union-attr,operator]
        layer.initial_weights = weights  # copied into the shards, then dropped
        # how each table was drawn (models/seeded_init.py): its checkpoint may start at that init
        layer.initial_seeds = [seeded_init_of(t.weight) for t in native.tables]  # type: ignore[union-attr,arg-type]
        # a table built inside seeded_init.drawn_in_shards(): meta, drawn shard by shard
        layer.initial_draws = [deferred_init_of(t.weight) for t in native.tables]  # type: ignore[union-attr,arg-type]
        layer.table_shapes = [(int(w.shape[0]), int(w.shape[1])) for w in weights]
        # Not a submodule: neither the model's parameters nor DDP see the tables.
        layer.__dict__["collections"] = TableCollections(layer.table_shapes)
        layer.__dict__["lookup"] = layer.collections  # a plain attribute, not a submodule
        layer.read_tables = None
        layer.write_tables = None
        layer._fetched = {}
        layer.lockstep = False
        layer.tables_in_state = True
        return layer

    @property
    def tables(self) -> nn.ModuleList:  # type: ignore[override]
        return nn.ModuleList()  # nothing for the native optimizers, l2 or clipping to find

    @tables.setter
    def tables(self, value: Any) -> None:
        pass

    # -- forward: one lookup per table, then FieldEmbedding's pooling on the rows --------------
    def _requests(self, sparse: torch.Tensor) -> list[list[torch.Tensor]]:
        """Per table, in the order FieldEmbedding's forward reads them: [B, n] row ids."""
        requests: list[list[torch.Tensor]] = [[] for _ in self.table_shapes]
        for j, singles in enumerate(self.single_fields):
            if singles:
                requests[j].append(self._single_ids(sparse, j))
        for m in self.multi:
            ids = sparse[:, m.cols[0] : m.cols[1]]
            requests[m.table].append(torch.where(ids >= 0, ids + m.delta, 0))
            if m.target is not None:
                t_table, t_delta = self.single_table[m.target]
                col = self.single_col[m.target]
                requests[t_table].append(sparse[:, col : col + 1] + t_delta)
        return requests

    def forward(self, sparse: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        requests = self._requests(sparse)
        empty = sparse.new_zeros((sparse.shape[0], 0))
        ids = [torch.cat(r, dim=1) if r else empty for r in requests]
        rows = self.lookup(ids)  # sharded: a collective, in training and evaluation alike
        self._fetched = {
            j: list(torch.split(rows[j], [r.shape[1] for r in requests[j]], dim=1))
            for j in range(len(rows))
            if requests[j]
        }
        try:
            return super().forward(sparse, dense)
        finally:
            self._fetched = {}

    def _next(self, table: int) -> torch.Tensor:
        return self._fetched[table].pop(0)

    def _singles(self, sparse: torch.Tensor) -> list[torch.Tensor]:
        out = []
        for j, singles in enumerate(self.single_fields):
            if singles:
                out.append(self._next(j))
            else:
                dim = self.table_shapes[j][1]
                out.append(sparse.new_zeros((sparse.shape[0], 0, dim), dtype=torch.float32))
        return out

    def _lookup(self, table: int, ids: torch.Tensor) -> torch.Tensor:
        rows = self._next(table)  # [B, n, dim]: what _requests asked for, in the same order
        return rows.reshape(*ids.shape, -1).contiguous()  # a slice of the lookup: views need it

    def _position_rows(
        self, m: Any, ids: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor
    ) -> torch.Tensor:
        # the whole [B, L] lookup was made (one per table, _requests): its unpadded rows
        return self._lookup(m.table, ids)[rows, cols]

    def rows_used(self, sparse: torch.Tensor) -> list[tuple[nn.Module, torch.Tensor]]:
        return []  # the fused optimizer owns the rows (trainer.embedding_l2 is refused)

    # -- the ordinary layout in checkpoints -----------------------------------------------------
    def full_tables(self) -> list[torch.Tensor]:
        if self.read_tables is not None:
            return self.read_tables()
        return [w.clone() for w in self.initial_weights]

    def state_dict(self, *args: Any, destination: Any = None, prefix: str = "", keep_vars=False):  # type: ignore[override]
        out = super().state_dict(destination=destination, prefix=prefix, keep_vars=keep_vars)
        if not self.tables_in_state:
            return out
        for j, weight in enumerate(self.full_tables()):
            out[f"{prefix}tables.{j}.weight"] = weight
        return out

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing, *rest):  # type: ignore[override]
        keys = [f"{prefix}tables.{j}.weight" for j in range(len(self.table_shapes))]
        weights = [state_dict.pop(k, None) for k in keys]
        if not self.tables_in_state:  # the shards are loaded from their DCP folder
            weights = []
        missing.extend(k for k, w in zip(keys, weights, strict=False) if w is None)
        if weights and all(w is not None for w in weights):
            if self.write_tables is not None:
                self.write_tables(weights)  # type: ignore[arg-type]
            else:
                self.initial_weights = [w.detach().clone() for w in weights]  # type: ignore[union-attr]
                self.initial_draws = [None] * len(weights)  # values now, none to draw
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing, *rest)


def torchrec_layers(model: nn.Module) -> list[TorchRecFieldEmbedding]:
    return [m for m in model.modules() if isinstance(m, TorchRecFieldEmbedding)]


def lookups_in_lockstep(model: nn.Module) -> bool:
    """Whether `model`'s lookups are collectives of several ranks (its tables sharded over them):
    every rank must then make every forward that another makes (Evaluator.predict)."""
    return any(layer.lockstep for layer in torchrec_layers(model))


def convert_model(model: nn.Module) -> list[TorchRecFieldEmbedding]:
    """Replace every FieldEmbedding of `model` (in place) by its TorchRec counterpart."""
    layers = []
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, FieldEmbedding) and not isinstance(child, TorchRecFieldEmbedding):
                layer = TorchRecFieldEmbedding.from_native(child)
                setattr(parent, name, layer)
                layers.append(layer)
    return layers
