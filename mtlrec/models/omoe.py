"""OMoE: One-gate Mixture-of-Experts, the baseline of the MMoE paper.

Ma et al., "Modeling Task Relationships in Multi-task Learning with Multi-gate
Mixture-of-Experts", KDD 2018, Sec. 4.2 (OMoE): like MMoE, but ONE gate shared by all tasks, so
every task reads the same mixture of the experts.

    x      = Embedding(sparse) ++ dense
    f_i(x) = expert_i(x),                       i = 1..num_experts   (MLPs of expert_dims)
    g(x)   = softmax(W_g x)                     one gate for all tasks (an MLP of gate_dims first, if set)
    h      = sum_i g(x)_i f_i(x)                the single mixture
    y_k    = tower_k(h)                         one tower per task (tower_dims, then one output)

The forward pass returns "gates" [B, tasks, experts] (the one gate, repeated for each task) so the
trainer records gate weights, entropy and expert utilization like for MMoE.

Config keys (conf/model/omoe.yaml): embedding_dim, embedding_init_std, num_experts, expert_dims,
gate_dims, tower_dims, activation, dropout, batch_norm.
Outputs: one per task, named after the task; tasks may mix binary and regression.
"""

from __future__ import annotations

import torch
from torch import nn

from mtlrec.data.spec import DatasetSpec, TaskSpec
from mtlrec.models.base import MultiTaskModel
from mtlrec.models.layers import FeatureEmbedding, GroupedMLP, MixtureOfExperts, last_weight
from mtlrec.models.mmoe import MoEConfig
from mtlrec.models.registry import register


class OMoEConfig(MoEConfig):
    """MMoE's expert/gate/tower keys: only the number of gates differs."""


@register("omoe")
class OMoE(MultiTaskModel):
    Config = OMoEConfig

    def __init__(self, spec: DatasetSpec, tasks: tuple[TaskSpec, ...], cfg: OMoEConfig):
        super().__init__()
        self.output_names = [t.output_name for t in tasks]
        self.output_types = {t.output_name: t.type for t in tasks}
        self.embedding = FeatureEmbedding(spec, cfg.embedding_dim, cfg.embedding_init_std)
        act, drop, bn = cfg.activation, cfg.dropout, cfg.batch_norm
        self.moe = MixtureOfExperts(
            self.embedding.out_dim,
            cfg.num_experts,
            cfg.expert_dims,
            1,  # one gate for every task: the difference from MMoE
            cfg.gate_dims,
            act,
            drop,
            bn,
        )
        self.towers = GroupedMLP(
            len(tasks),
            self.moe.out_dim,
            cfg.tower_dims,
            act,
            drop,
            bn,
            shared_input=True,
            out_dim=1,
        )

    def forward(self, sparse: torch.Tensor, dense: torch.Tensor) -> dict[str, torch.Tensor]:
        mixed, gates = self.moe(self.embedding(sparse, dense))  # [1, B, H], [1, B, E]
        y = self.towers(mixed[0]).squeeze(-1)  # [T, B]
        out = {name: y[k] for k, name in enumerate(self.output_names)}
        out["gates"] = gates.transpose(0, 1).expand(-1, len(self.output_names), -1)  # [B, T, E]
        return out

    def shared_trunk_last_layer(self) -> nn.Parameter | None:
        """The experts' output layer (not the one gate, registered after them)."""
        return last_weight(self.moe.experts)
