"""MMoE: Multi-gate Mixture-of-Experts.

Ma et al., "Modeling Task Relationships in Multi-task Learning with Multi-gate
Mixture-of-Experts", KDD 2018.

    x        = Embedding(sparse) ++ dense
    f_i(x)   = expert_i(x),                      i = 1..num_experts   (MLPs of expert_dims)
    g^k(x)   = softmax(W_gk x)                   one gate per task k (an MLP of gate_dims first, if set)
    y_k      = tower_k( sum_i g^k(x)_i f_i(x) )  one tower per task (tower_dims, then one output)

Attention gates (`gate: attention`, the study note's "why not replace the gate with attention?"):
task k has a learned query q_k in R^d that attends over the experts' outputs, scaled dot product,

    g^k(x)_i = softmax_i( <q_k, W_K f_i(x)> / sqrt(d) )      W_K: one d x H key map for all experts

so a task picks experts by what they output on this row rather than by a linear map of the input.
The weights still sum to 1 over the experts and are logged like the softmax gates.

Backbone (`backbone`, interaction.py): `deepfm` adds the FM term (first + second order) to every logit, `dcn`
puts DCN-v2 cross layers below the experts and gates (they read the crossed input).

All experts run as one batched matmul per layer (no Python loop over experts), and so do all
gates and all towers. The forward pass also returns "gates" [B, tasks, experts] so the trainer
can record mean gate weights per task and expert (the first place to look for expert collapse).

Config keys (conf/model/mmoe.yaml): embedding_dim, embedding_init_std, num_experts, expert_dims,
gate_dims, tower_dims, gate, attention_dim, backbone, cross_layers, fm_task_scale, activation, dropout, batch_norm,
tower_output_init (torch: nn.Linear's draw, as the reference code; balanced: that draw with alternating
signs, so no tower starts with output weights of one sign: docs/results.md "Seed study").
Outputs: one per task, named after the task; tasks may mix binary and regression.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from mtlrec.data.spec import DatasetSpec, TaskSpec
from mtlrec.errors import MtlrecError
from mtlrec.models.base import MultiTaskModel
from mtlrec.models.interaction import FeatureInteraction, check_backbone
from mtlrec.models.layers import (
    TOWER_OUTPUT_INITS,
    CommonConfig,
    FeatureEmbedding,
    GroupedMLP,
    check_dims,
    check_positive,
    init_tower_output,
    last_weight,
)
from mtlrec.models.registry import register


@dataclass
class MoEConfig(CommonConfig):
    """The keys MMoE and OMoE share."""

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


GATES = ("softmax", "attention")


@dataclass
class MMoEConfig(MoEConfig):
    gate: str = "softmax"
    attention_dim: int = 16
    backbone: str = "mlp"
    cross_layers: int = 2
    fm_task_scale: bool = False
    tower_output_init: str = "torch"

    def validate(self) -> None:
        super().validate()
        if self.tower_output_init not in TOWER_OUTPUT_INITS:
            raise MtlrecError(
                f"model.tower_output_init '{self.tower_output_init}' is unknown; use one of "
                f"{list(TOWER_OUTPUT_INITS)}"
            )
        if self.gate not in GATES:
            raise MtlrecError(f"model.gate '{self.gate}' is unknown; use one of {list(GATES)}")
        check_positive("model.attention_dim", self.attention_dim)
        if self.gate == "attention" and self.gate_dims:
            raise MtlrecError(
                f"model.gate_dims={list(self.gate_dims)} applies to gate=softmax only (an attention "
                f"gate has no input network); set model.gate_dims=[]"
            )
        check_backbone(self.backbone, self.cross_layers)


class AttentionGate(nn.Module):
    """Per task a learned query over the experts' outputs: [E, B, H] -> weights [T, B, E]."""

    def __init__(self, num_tasks: int, expert_dim: int, attention_dim: int):
        super().__init__()
        self.query = nn.Parameter(torch.randn(num_tasks, attention_dim) / math.sqrt(attention_dim))
        self.key = nn.Linear(expert_dim, attention_dim, bias=False)
        self.scale = 1.0 / math.sqrt(attention_dim)

    def forward(self, experts: torch.Tensor) -> torch.Tensor:
        scores = torch.einsum("td,ebd->tbe", self.query, self.key(experts)) * self.scale
        return torch.softmax(scores, dim=-1)


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
        self.interaction = FeatureInteraction(
            cfg.backbone,
            spec,
            cfg.embedding_dim,
            in_dim,
            n_tasks,
            cfg.cross_layers,
            fm_task_scale=cfg.fm_task_scale,
        )
        act, drop, bn = cfg.activation, cfg.dropout, cfg.batch_norm
        self.experts = GroupedMLP(
            cfg.num_experts, in_dim, cfg.expert_dims, act, drop, bn, shared_input=True
        )
        self.attention = cfg.gate == "attention"
        if self.attention:
            self.gates: nn.Module = AttentionGate(n_tasks, self.experts.out_dim, cfg.attention_dim)
        else:
            self.gates = GroupedMLP(
                n_tasks, in_dim, cfg.gate_dims, act, drop, bn, shared_input=True,
                out_dim=cfg.num_experts,
            )  # fmt: skip
        self.towers = GroupedMLP(
            n_tasks, self.experts.out_dim, cfg.tower_dims, act, drop, bn, out_dim=1
        )
        init_tower_output(self.towers, cfg.tower_output_init)  # draws nothing

    def forward(self, sparse: torch.Tensor, dense: torch.Tensor) -> dict[str, torch.Tensor]:
        x, fm = self.interaction(
            self.embedding(sparse, dense), sparse, dense
        )  # [B, in], FM term [T, B] or None
        experts = self.experts(x)  # [E, B, H]
        # [T, B, E]: attention reads the experts' outputs, the softmax gate the input
        gates = self.gates(experts) if self.attention else torch.softmax(self.gates(x), dim=-1)
        mixed = torch.einsum("tbe,ebh->tbh", gates, experts)  # [T, B, H]
        y = self.towers(mixed).squeeze(-1)  # [T, B]
        if fm is not None:
            y = y + fm
        out = {name: y[k] for k, name in enumerate(self.output_names)}
        out["gates"] = gates.transpose(0, 1)  # [B, T, E]
        return out

    def shared_trunk_last_layer(self) -> nn.Parameter | None:
        """The experts' output layer (every expert, every task reaches it through its gate)."""
        return last_weight(self.experts)
