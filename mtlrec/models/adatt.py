"""AdaTT: Adaptive Task-to-Task Fusion Network (with shared experts).

Li, Li, Chen, Gong, Jia, Zhang, ... & Xiong, "AdaTT: Adaptive Task-to-Task Fusion Network for
Multitask Learning in Recommendations", KDD 2023 (Meta; the authors' code:
facebookresearch/AdaTT, `AdaTTWSharedExps`).

Every level l holds, for each task k, `num_task_experts` experts of its own (E^l_k, reading task
k's input x^l_k) and `num_shared_experts` shared experts (E^l_s, reading the shared input x^l_s).
Each task's fusion unit mixes ALL experts of the level with a softmax gate on its own input, and
adds a residual from its own experts:

    E^l      = [E^l_1 ++ ... ++ E^l_T ++ E^l_s]                                 all experts
    x^{l+1}_k = sum_j softmax(W^l_k x^l_k)_j E^l_j  +  sum_{j in own(k)} v^l_{k,j} E^l_j
    x^{l+1}_s = the same with the shared gate and the shared experts as "own" (levels 1..L-1)
    y_k      = tower_k(x^{L+1}_k),        x^1_k = x^1_s = Embedding(sparse) ++ dense

v (the native-expert residual) is fixed to 1 when every unit has exactly one own expert and is
learned otherwise (initialised uniform in +-sqrt(1/n_own)), as in the authors' code. The last
level has no shared unit (nothing reads it). num_shared_experts = 0 is AdaTT-sp. Gates are
softmax(linear), experts MLPs of `expert_dims`.

The last level's task gates (without the residual) are returned as "gates" [B, tasks, experts]
in the order above (expert e < T*S is task e // S's own; the rest are shared).

Config keys (conf/model/adatt.yaml): embedding_dim, embedding_init_std, num_levels,
num_task_experts, num_shared_experts, expert_dims, tower_dims, activation, dropout, batch_norm.
Outputs: one per task, named after the task.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from mtlrec.data.spec import DatasetSpec, TaskSpec
from mtlrec.errors import MtlrecError
from mtlrec.models.base import MultiTaskModel
from mtlrec.models.layers import (
    CommonConfig,
    ExpertLevel,
    FeatureEmbedding,
    GroupedMLP,
    check_dims,
    check_positive,
    last_weight,
)
from mtlrec.models.registry import register


@dataclass
class AdaTTConfig(CommonConfig):
    num_levels: int = 2
    num_task_experts: int = 1
    num_shared_experts: int = 1
    expert_dims: list[int] = field(default_factory=lambda: [64, 32])
    tower_dims: list[int] = field(default_factory=lambda: [32])

    def validate(self) -> None:
        super().validate()
        check_positive("model.num_levels", self.num_levels)
        check_positive("model.num_task_experts", self.num_task_experts)
        v = self.num_shared_experts
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise MtlrecError(f"model.num_shared_experts must be an integer >= 0, got {v!r}")
        check_dims("model.expert_dims", self.expert_dims)
        check_dims("model.tower_dims", self.tower_dims, allow_empty=True)


class FusionLevel(ExpertLevel):
    """One AdaTT level: T*S task experts + Sh shared ones, T (+1 shared) fusion units."""

    own: torch.Tensor  # a buffer, declared for the type checker

    def __init__(
        self,
        in_dim: int,
        tasks: int,
        per_task: int,
        shared: int,
        expert_dims: list[int],
        shared_unit: bool,
        first: bool,
        mlp: tuple[str, float, bool],
    ):
        super().__init__(in_dim, tasks, per_task, shared, expert_dims, mlp, first)
        t, s, sh = tasks, per_task, shared
        units = t + (1 if shared_unit and sh > 0 else 0)
        self.gates = GroupedMLP(units, in_dim, [], shared_input=first, out_dim=self.num_experts)
        own = torch.zeros(units, self.num_experts)
        for u in range(units):
            own[u, self.expert_input == u] = 1.0
        self.register_buffer("own", own, persistent=False)
        # The native-expert residual: unit weights when every unit owns one expert, else learned.
        self.self_weights: nn.Parameter | None = None
        if s != 1 or sh not in (0, 1):
            w = torch.empty(units, self.num_experts)
            for u in range(units):
                bound = math.sqrt(1.0 / float(own[u].sum()))
                nn.init.uniform_(w[u], -bound, bound)
            self.self_weights = nn.Parameter(w)
        self.units = units

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: [B, in] (first level) or [units of the level before, B, in] -> (fused [units, B, H],
        task gates [T, B, E])."""
        experts = self.expert_outputs(x)  # [E, B, H]
        gate_in = x if self.first else x[: self.units]
        gates = torch.softmax(self.gates(gate_in), dim=-1)  # [U, B, E]
        residual = self.own if self.self_weights is None else self.own * self.self_weights
        fused = torch.einsum("ube,ebh->ubh", gates + residual.unsqueeze(1), experts)
        return fused, gates[: self.tasks]


@register("adatt")
class AdaTT(MultiTaskModel):
    Config = AdaTTConfig

    def __init__(self, spec: DatasetSpec, tasks: tuple[TaskSpec, ...], cfg: AdaTTConfig):
        super().__init__()
        self.output_names = [t.output_name for t in tasks]
        self.output_types = {t.output_name: t.type for t in tasks}
        self.embedding = FeatureEmbedding(spec, cfg.embedding_dim, cfg.embedding_init_std)
        mlp = (cfg.activation, cfg.dropout, cfg.batch_norm)
        in_dim = self.embedding.out_dim
        self.levels = nn.ModuleList()
        for level in range(cfg.num_levels):
            lvl = FusionLevel(
                in_dim,
                len(tasks),
                cfg.num_task_experts,
                cfg.num_shared_experts,
                cfg.expert_dims,
                shared_unit=level < cfg.num_levels - 1,
                first=level == 0,
                mlp=mlp,
            )
            self.levels.append(lvl)
            in_dim = lvl.out_dim
        self.towers = GroupedMLP(len(tasks), in_dim, cfg.tower_dims, *mlp, out_dim=1)

    def forward(self, sparse: torch.Tensor, dense: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.embedding(sparse, dense)
        gates = x  # replaced by the last level's gates
        for lvl in self.levels:
            x, gates = lvl(x)
        y = self.towers(x[: len(self.output_names)]).squeeze(-1)  # [T, B]
        out = {name: y[k] for k, name in enumerate(self.output_names)}
        out["gates"] = gates.transpose(0, 1)  # [B, T, E]
        return out

    def shared_trunk_last_layer(self) -> nn.Parameter | None:
        """The last level's experts' output layer (every task's unit mixes every expert)."""
        last: FusionLevel = self.levels[-1]  # type: ignore[assignment]
        return last_weight(last.experts)
