"""MMoE: Multi-gate Mixture-of-Experts.

Ma et al., "Modeling Task Relationships in Multi-task Learning with Multi-gate
Mixture-of-Experts", KDD 2018.

    x        = Embedding(sparse) ++ dense
    f_i(x)   = expert_i(x),                      i = 1..num_experts   (MLPs of expert_dims)
    g^k(x)   = softmax(W_gk x)                   one gate per task k (an MLP of gate_dims first, if set)
    y_k      = tower_k( sum_i g^k(x)_i f_i(x) )  one tower per task (tower_dims, then one output)

All experts run as one batched matmul per layer (no Python loop over experts), and so do all
gates and all towers. The forward pass also returns "gates" [B, tasks, experts] so the trainer
can record mean gate weights per task and expert (the first place to look for expert collapse).

Config keys (conf/model/mmoe.yaml): embedding_dim, embedding_init_std, num_experts, expert_dims,
gate_dims, tower_dims, activation, dropout, batch_norm.
Outputs: one per task, named after the task; tasks may mix binary and regression.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from mtlrec.data.spec import DatasetSpec, TaskSpec
from mtlrec.models.base import MultiTaskModel
from mtlrec.models.layers import (
    CommonConfig,
    FeatureEmbedding,
    GroupedMLP,
    check_dims,
    check_positive,
)
from mtlrec.models.registry import register


@dataclass
class MMoEConfig(CommonConfig):
    num_experts: int = 8
    expert_dims: list[int] = field(default_factory=lambda: [64, 32])
    gate_dims: list[int] = field(default_factory=list)
    tower_dims: list[int] = field(default_factory=lambda: [32])

    def validate(self) -> None:
        super().validate()
        check_positive("model.num_experts", self.num_experts)
        check_dims("model.expert_dims", self.expert_dims)
        check_dims("model.gate_dims", self.gate_dims, allow_empty=True)
        check_dims("model.tower_dims", self.tower_dims, allow_empty=True)


@register("mmoe")
class MMoE(MultiTaskModel):
    Config = MMoEConfig

    def __init__(self, spec: DatasetSpec, tasks: tuple[TaskSpec, ...], cfg: MMoEConfig):
        super().__init__()
        self.output_names = [t.output_name for t in tasks]
        self.output_types = {t.output_name: t.type for t in tasks}
        n_tasks = len(tasks)
        self.embedding = FeatureEmbedding(spec, cfg.embedding_dim, cfg.embedding_init_std)
        in_dim = self.embedding.out_dim
        act, drop, bn = cfg.activation, cfg.dropout, cfg.batch_norm
        self.experts = GroupedMLP(
            cfg.num_experts, in_dim, cfg.expert_dims, act, drop, bn, shared_input=True
        )
        self.gates = GroupedMLP(
            n_tasks,
            in_dim,
            cfg.gate_dims,
            act,
            drop,
            bn,
            shared_input=True,
            out_dim=cfg.num_experts,
        )
        self.towers = GroupedMLP(
            n_tasks, self.experts.out_dim, cfg.tower_dims, act, drop, bn, out_dim=1
        )

    def forward(self, sparse: torch.Tensor, dense: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.embedding(sparse, dense)  # [B, in]
        experts = self.experts(x)  # [E, B, H]
        gates = torch.softmax(self.gates(x), dim=-1)  # [T, B, E]
        mixed = torch.einsum("tbe,ebh->tbh", gates, experts)  # [T, B, H]
        y = self.towers(mixed).squeeze(-1)  # [T, B]
        out = {name: y[k] for k, name in enumerate(self.output_names)}
        out["gates"] = gates.transpose(0, 1)  # [B, T, E]
        return out
