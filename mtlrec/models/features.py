"""FieldEmbedding: every embedded field (single ids, bags, sequences) -> one vector each, + dense.

Same interface as `layers.FeatureEmbedding`: forward(sparse [B, C] int64, dense [B, E] float32)
-> [B, out_dim] (or [copies, B, out_dim]); attributes out_dim, num_dense, tables. The columns of
`sparse`/`dense` are those of `DatasetSpec.layout`: single ids first, then `max_len` padded (-1)
columns per bag/sequence field; dense features first, then the weights of weighted bags.

Output: the single-id fields' embeddings (grouped per embedding size, as FeatureEmbedding: for a
spec with single ids only the output is FeatureEmbedding's), then one pooled vector per
bag/sequence field (mtlrec.models.pooling), then the dense features. With `feature_groups` in the
spec, the vectors of each group's fields are summed into one vector per group (the ESMM paper's
field-wise pooling); ungrouped fields follow the groups.

Embedding rows: one fused table per embedding size holding the single-id fields and the bags
with a vocabulary of their own; a sequence with `shares_vocab_with` looks up its owner's rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

import torch
from torch import nn

from mtlrec.data.spec import DatasetSpec, FeatureSpec
from mtlrec.errors import MtlrecError
from mtlrec.models.pooling import TargetAttention, masked_pool
from mtlrec.models.seeded_init import new_table


@dataclass(frozen=True)
class _Multi:
    """Where a bag/sequence field's ids, weights, rows and target are."""

    name: str
    table: int
    delta: int  # fused id -> row of its table
    cols: tuple[int, int]
    weights: tuple[int, int] | None
    dim: int
    pool: str
    target: str | None  # the single-id field a target-attention sequence attends from


class FieldEmbedding(nn.Module):
    """Embeds and pools every field of `spec` (see the module docstring); `attention_hidden`: the
    hidden sizes of the DIN activation unit of target-attention sequences."""

    def __init__(
        self,
        spec: DatasetSpec,
        embedding_dim: int,
        init_std: float = 0.01,
        copies: int = 1,
        attention_hidden: Sequence[int] = (36,),
    ):
        super().__init__()
        self.copies = copies
        self.num_dense = len(spec.dense)
        layout, offsets = spec.layout, spec.vocab_offsets
        self.num_single = len(spec.sparse)
        owners = spec.vocab_owners
        dim_of = {f.name: f.embedding_dim or embedding_dim for f in owners}
        for f in spec.multi:
            if f.shares_vocab_with:
                dim_of[f.name] = dim_of[f.shares_vocab_with]
        self.tables = nn.ModuleList()
        self.group_dims: list[int] = []
        table_of: dict[str, tuple[int, int]] = {}  # owner -> (table, delta)
        self.single_fields: list[list[int]] = []  # per table: single-id columns it serves
        for j, dim in enumerate(sorted({dim_of[f.name] for f in owners})):
            fields = [f for f in owners if dim_of[f.name] == dim]
            table = new_table(sum(f.vocab_size for f in fields), dim * copies, init_std)
            self.tables.append(table)
            self.group_dims.append(dim)
            start = 0
            for f in fields:
                table_of[f.name] = (j, start - offsets[f.name])
                start += f.vocab_size
            singles = [i for i, f in enumerate(spec.sparse) if dim_of[f.name] == dim]
            self.single_fields.append(singles)
            delta = torch.tensor([table_of[spec.sparse[i].name][1] for i in singles])
            self.register_buffer(f"fields_{j}", torch.tensor(singles), persistent=False)
            self.register_buffer(f"delta_{j}", delta, persistent=False)
        self.single_table = {f.name: table_of[f.name] for f in spec.sparse}
        self.single_col = {f.name: i for i, f in enumerate(spec.sparse)}
        self.multi = [self._multi(spec, f, table_of, dim_of, layout) for f in spec.multi]
        self.attention = nn.ModuleDict(
            {
                m.name: TargetAttention(m.dim, attention_hidden)
                for m in self.multi
                if m.pool == "target_attention"
            }
        )
        self.dim_of = dim_of
        self.groups = {g: list(names) for g, names in spec.feature_groups.items()}
        grouped = {n for names in self.groups.values() for n in names}
        for g, names in self.groups.items():
            dims = {dim_of[n] for n in names}
            if len(dims) > 1:
                raise MtlrecError(
                    f"feature_groups.{g}: fields {names} have different embedding sizes {sorted(dims)}; a group sums vectors of one size"
                )
        self.ungrouped = [
            f.name for f in spec.features if f.kind != "dense" and f.name not in grouped
        ]
        if self.groups:
            embedded = sum(dim_of[names[0]] for names in self.groups.values())
            embedded += sum(dim_of[n] for n in self.ungrouped)
        else:
            embedded = sum(dim_of[f.name] for f in spec.features if f.kind != "dense")
        self.out_dim = embedded + self.num_dense
        # The common case (single ids only, one embedding size): look the columns up as they are.
        self.direct = (
            len(self.tables) == 1
            and not self.multi
            and self.single_fields[0] == list(range(self.num_single))
            and all(delta == 0 for _, delta in self.single_table.values())
        )

    def _multi(self, spec, f: FeatureSpec, table_of, dim_of, layout) -> _Multi:
        owner = f.shares_vocab_with or f.name
        table, delta = table_of[owner]
        if f.pool == "target_attention":
            assert f.target is not None  # DatasetSpec.validate checks it
            if dim_of[f.target] != dim_of[f.name]:
                raise MtlrecError(
                    f"feature '{f.name}': target attention needs its target '{f.target}' to have the same embedding size ({dim_of[f.target]} != {dim_of[f.name]})"
                )
        return _Multi(
            f.name,
            table,
            delta,
            layout.sparse[f.name],
            layout.weights.get(f.name),
            dim_of[f.name],
            f.pool,
            f.target if f.pool == "target_attention" else None,
        )

    # -- forward -------------------------------------------------------------------------------
    def _singles(self, sparse: torch.Tensor) -> list[torch.Tensor]:
        """Per table: [B, n_j, dim * copies] embeddings of its single-id fields."""
        batch = sparse.shape[0]
        out = []
        for j, table in enumerate(self.tables):
            if not self.single_fields[j]:
                weight = cast(torch.Tensor, table.weight)
                out.append(sparse.new_empty((batch, 0, weight.shape[1]), dtype=weight.dtype))
                continue
            ids = self._single_ids(sparse, j)
            out.append(self._rows(table, ids.reshape(-1)).view(batch, ids.shape[1], -1))
        return out

    def _single_ids(self, sparse: torch.Tensor, j: int) -> torch.Tensor:
        """Rows of table j the single-id fields it serves look up: [B, n_j]."""
        if self.direct:  # one table, every column a single id in order, no offset to add
            return sparse
        return sparse[:, getattr(self, f"fields_{j}")] + getattr(self, f"delta_{j}")

    @staticmethod
    def _rows(table: nn.Module, flat_ids: torch.Tensor) -> torch.Tensor:
        weight = cast(torch.Tensor, table.weight)
        if table.sparse:  # a row-wise optimizer (trainer.embedding_optimizer): O(batch) grads
            return nn.functional.embedding(flat_ids, weight, sparse=True)
        # index_select: the same values as table(ids), but a much faster backward on CPU.
        return weight.index_select(0, flat_ids)

    def _lookup(self, table: int, ids: torch.Tensor) -> torch.Tensor:
        return self._rows(self.tables[table], ids.reshape(-1)).view(*ids.shape, -1)

    def rows_used(self, sparse: torch.Tensor) -> list[tuple[nn.Module, torch.Tensor]]:
        """(table, row ids) of every lookup a batch makes (trainer.embedding_l2's rows)."""
        used = [
            (table, self._single_ids(sparse, j).reshape(-1))
            for j, table in enumerate(self.tables)
            if self.single_fields[j]
        ]
        for m in self.multi:
            ids = sparse[:, m.cols[0] : m.cols[1]]
            used.append((self.tables[m.table], (ids[ids >= 0] + m.delta).reshape(-1)))
        return used

    def _pooled(self, m: _Multi, sparse: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        """[B, dim * copies]: the field's values pooled (padding masked out)."""
        ids = sparse[:, m.cols[0] : m.cols[1]]
        mask = ids >= 0
        if m.pool == "target_attention" and sparse.device.type == "cpu":
            return self._attended_positions(m, sparse, ids, mask)
        emb = self._lookup(m.table, torch.where(mask, ids + m.delta, 0))  # [B, L, dim * copies]
        if m.pool != "target_attention":
            weights = dense[:, m.weights[0] : m.weights[1]] if m.weights else None
            # Elementwise over the last axis, so the copies ride along untouched.
            return masked_pool(emb, mask, m.pool, weights)
        q = self._target(m, sparse)  # [B, d * copies]
        batch, length, c, d = ids.shape[0], ids.shape[1], self.copies, m.dim
        # Each copy attends on its own: copies become extra rows of the batch.
        k = emb.view(batch, length, c, d).transpose(1, 2).reshape(batch * c, length, d)
        qc = q.view(batch * c, d)
        mc = mask.repeat_interleave(c, dim=0)
        return self.attention[m.name](qc, k, mc).view(batch, c * d)

    def _target(self, m: _Multi, sparse: torch.Tensor) -> torch.Tensor:
        """[B, d * copies]: the target-attention query, the target field's embedding."""
        assert m.target is not None
        t_table, t_delta = self.single_table[m.target]
        return self._lookup(t_table, sparse[:, self.single_col[m.target]] + t_delta)

    def _attended_positions(
        self, m: _Multi, sparse: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        """Target attention on CPU: only the unpadded positions are looked up and attended
        (TargetAttention.pool_positions); a padded row is never read nor given a gradient."""
        rows, cols = mask.nonzero(as_tuple=True)
        k = self._position_rows(m, ids, rows, cols)  # [n, d * copies]
        q = self._target(m, sparse)
        batch, c, d = ids.shape[0], self.copies, m.dim
        # Copy j of position i attends from row rows[i] * c + j of the copies-as-rows batch.
        rows_c = (rows.unsqueeze(1) * c + torch.arange(c, device=rows.device)).reshape(-1)
        k = k.unflatten(1, (c, d)).flatten(0, 1)  # [n * c, d]
        attention = cast(TargetAttention, self.attention[m.name])
        pooled = attention.pool_positions(q.view(batch * c, d), k, rows_c)
        return pooled.view(batch, c * d)

    def _position_rows(
        self, m: _Multi, ids: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor
    ) -> torch.Tensor:
        """[n, dim * copies]: the rows of the sequence's positions (rows, cols) (unpadded)."""
        return self._rows(self.tables[m.table], ids[rows, cols] + m.delta)

    def _arrange(self, x: torch.Tensor, dim: int) -> torch.Tensor:
        """[B, n, dim * copies] -> [B, n * dim] or [copies, B, n * dim]."""
        batch = x.shape[0]
        if self.copies == 1:
            return x.reshape(batch, -1)
        return (
            x.view(batch, -1, self.copies, dim).permute(2, 0, 1, 3).reshape(self.copies, batch, -1)
        )

    def forward(self, sparse: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        singles = self._singles(sparse)
        pooled = {m.name: self._pooled(m, sparse, dense) for m in self.multi}
        parts: list[torch.Tensor] = []
        if not self.groups:
            parts += [self._arrange(x, d) for x, d in zip(singles, self.group_dims, strict=True)]
            parts += [self._arrange(pooled[m.name].unsqueeze(1), m.dim) for m in self.multi]
        else:
            vectors = dict(pooled)
            for name, (j, _) in self.single_table.items():
                k = self.single_fields[j].index(self.single_col[name])
                vectors[name] = singles[j][:, k]
            for names in self.groups.values():
                total = torch.stack([vectors[n] for n in names]).sum(0)
                parts.append(self._arrange(total.unsqueeze(1), self.dim_of[names[0]]))
            parts += [
                self._arrange(vectors[n].unsqueeze(1), self.dim_of[n]) for n in self.ungrouped
            ]
        real_dense = dense[:, : self.num_dense]
        if self.copies == 1:
            parts.append(real_dense)
        else:
            parts.append(real_dense.unsqueeze(0).expand(self.copies, -1, -1))
        return torch.cat(parts, dim=-1)
