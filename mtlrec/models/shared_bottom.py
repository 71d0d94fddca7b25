"""Shared-bottom multi-task network.

Caruana, "Multitask Learning", Machine Learning 28, 1997; the baseline of the MMoE paper.

    h   = bottom(Embedding(sparse) ++ dense)        one MLP (bottom_dims) shared by all tasks
    y_k = tower_k(h)                                one tower per task (tower_dims, then one output)

Backbone (`backbone`, interaction.py): `deepfm` adds the FM term (first + second order) to every logit, `dcn`
puts DCN-v2 cross layers below the bottom.

Config keys (conf/model/shared_bottom.yaml): embedding_dim, embedding_init_std, bottom_dims,
tower_dims, backbone, cross_layers, fm_task_scale, activation, dropout, batch_norm. Outputs: one per task, named after the task.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from mtlrec.data.spec import DatasetSpec, TaskSpec
from mtlrec.models.base import MultiTaskModel
from mtlrec.models.interaction import FeatureInteraction, check_backbone
from mtlrec.models.layers import (
    MLP,
    CommonConfig,
    FeatureEmbedding,
    GroupedMLP,
    check_dims,
    last_weight,
)
from mtlrec.models.registry import register


@dataclass
class SharedBottomConfig(CommonConfig):
    bottom_dims: list[int] = field(default_factory=lambda: [64, 32])
    tower_dims: list[int] = field(default_factory=lambda: [32])
    backbone: str = "mlp"
    cross_layers: int = 2
    fm_task_scale: bool = False

    def validate(self) -> None:
        super().validate()
        check_dims("model.bottom_dims", self.bottom_dims)
        check_dims("model.tower_dims", self.tower_dims, allow_empty=True)
        check_backbone(self.backbone, self.cross_layers)


@register("shared_bottom")
class SharedBottom(MultiTaskModel):
    Config = SharedBottomConfig

    def __init__(self, spec: DatasetSpec, tasks: tuple[TaskSpec, ...], cfg: SharedBottomConfig):
        super().__init__()
        self.output_names = [t.output_name for t in tasks]
        self.output_types = {t.output_name: t.type for t in tasks}
        self.embedding = FeatureEmbedding(spec, cfg.embedding_dim, cfg.embedding_init_std)
        self.interaction = FeatureInteraction(
            cfg.backbone,
            spec,
            cfg.embedding_dim,
            self.embedding.out_dim,
            len(tasks),
            cfg.cross_layers,
            fm_task_scale=cfg.fm_task_scale,
        )
        self.bottom = MLP(
            self.embedding.out_dim, cfg.bottom_dims, cfg.activation, cfg.dropout, cfg.batch_norm
        )
        self.towers = GroupedMLP(
            len(tasks),
            self.bottom.out_dim,
            cfg.tower_dims,
            cfg.activation,
            cfg.dropout,
            cfg.batch_norm,
            shared_input=True,
            out_dim=1,
        )

    def forward(self, sparse: torch.Tensor, dense: torch.Tensor) -> dict[str, torch.Tensor]:
        x, fm = self.interaction(self.embedding(sparse, dense), sparse, dense)
        y = self.towers(self.bottom(x)).squeeze(-1)  # [T, B]
        if fm is not None:
            y = y + fm
        return {name: y[k] for k, name in enumerate(self.output_names)}

    def shared_trunk_last_layer(self) -> nn.Parameter | None:
        """The bottom's last layer."""
        return last_weight(self.bottom)
