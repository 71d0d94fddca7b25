"""Single-task baseline: one fully independent network per task, trained side by side.

The reference point of the MMoE paper's comparisons: no parameter is shared between tasks.

    y_k = tower_k(bottom_k(Embedding_k(sparse) ++ dense))     k = 1..tasks

The T networks share no parameter (each task owns its embedding rows, bottom and tower), but run
as one batched computation: the embedding table stores T embeddings per id side by side, and the
bottoms and towers are grouped MLPs. Training them together is the same as training T models
alone, because the total loss is a sum and Adam's updates are per parameter.

Backbone (`backbone`, interaction.py): `deepfm` adds to each task's logit the FM term of ITS OWN
embedding, `dcn` gives each task its own cross layers: still nothing shared.

Config keys (conf/model/single_task.yaml): embedding_dim, embedding_init_std, bottom_dims,
tower_dims, backbone, cross_layers, fm_task_scale, activation, dropout, batch_norm. Outputs: one per task, named after the task.
"""

from __future__ import annotations

from typing import cast

import torch
from torch import nn

from mtlrec.data.spec import DatasetSpec, TaskSpec
from mtlrec.models.base import MultiTaskModel
from mtlrec.models.interaction import FeatureInteraction
from mtlrec.models.layers import FeatureEmbedding, GroupedMLP
from mtlrec.models.registry import register
from mtlrec.models.shared_bottom import SharedBottomConfig


class SingleTaskConfig(SharedBottomConfig):
    """The same keys as shared-bottom; here every task gets its own bottom."""


@register("single_task")
class SingleTask(MultiTaskModel):
    Config = SingleTaskConfig

    def __init__(self, spec: DatasetSpec, tasks: tuple[TaskSpec, ...], cfg: SingleTaskConfig):
        super().__init__()
        self.output_names = [t.output_name for t in tasks]
        self.output_types = {t.output_name: t.type for t in tasks}
        n = len(tasks)
        self.embedding = FeatureEmbedding(spec, cfg.embedding_dim, cfg.embedding_init_std, copies=n)
        self.interaction = FeatureInteraction(
            cfg.backbone,
            spec,
            cfg.embedding_dim,
            self.embedding.out_dim,
            n,
            cfg.cross_layers,
            n,
            fm_task_scale=cfg.fm_task_scale,
        )
        self.nets = GroupedMLP(
            n,
            self.embedding.out_dim,
            list(cfg.bottom_dims) + list(cfg.tower_dims),
            cfg.activation,
            cfg.dropout,
            cfg.batch_norm,
            out_dim=1,
        )

    def forward(self, sparse: torch.Tensor, dense: torch.Tensor) -> dict[str, torch.Tensor]:
        x, fm = self.interaction(self.embedding(sparse, dense), sparse, dense)  # [T, B, in], FM
        y = self.nets(x).squeeze(-1)  # [T, B]
        if fm is not None:
            y = y + fm
        return {name: y[k] for k, name in enumerate(self.output_names)}

    def shared_trunk_last_layer(self) -> nn.Parameter | None:
        """None: the task networks share no parameter."""
        return None

    def task_parameter_groups(self) -> list[list[tuple[torch.nn.Parameter, object]]]:
        """Which parameters, and which part of each, task k's network owns: (param, index) pairs.

        The trainer clips `trainer.grad_clip_norm` per task network with these (joint clipping
        would let one task's gradients shrink another's: no longer T independent models).
        Indices are basic slices, so `grad[index]` is a view that clipping scales in place.
        """
        groups: list[list[tuple[torch.nn.Parameter, object]]] = []
        emb, n = self.embedding, len(self.output_names)
        for k in range(n):
            group: list[tuple[torch.nn.Parameter, object]] = []
            for table, dim in zip(emb.tables, emb.group_dims, strict=True):
                weight = cast(torch.nn.Parameter, table.weight)
                group.append((weight, (slice(None), slice(k * dim, (k + 1) * dim))))
            for linear in self.nets.linears:
                group += [
                    (cast(torch.nn.Parameter, linear.weight), k),
                    (cast(torch.nn.Parameter, linear.bias), k),
                ]
            for norm in self.nets.norms:
                for p in norm.parameters():
                    d = p.shape[0] // self.nets.groups
                    group.append((p, slice(k * d, (k + 1) * d)))
            # per-task interaction parameters (grouped cross layers, the FM's first-order
            # weights, FM scales) lead with T
            group += [(p, k) for p in self.interaction.parameters() if p.shape[0] == n]
            groups.append(group)
        return groups
