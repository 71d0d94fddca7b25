"""STEM: Shared and Task-specific EMbeddings (STEM-Net).

Su, Zhang, Ye, Wu, Cao, Zhang, Li & Yu, "STEM: Unleashing the Power of Embeddings for Multi-task
Recommendation", AAAI 2024 (the authors' code is in FuxiCTR's model zoo, `STEM`).

Every feature has T + 1 embeddings: one per task and one shared (one table, T + 1 times as wide:
the embedding parameters multiply by T + 1). With x_k = Embedding_k(sparse) ++ dense (task k's
copy) and x_s the shared copy, each level holds `num_specific_experts` experts per task (reading
x_k) and `num_shared_experts` shared experts (reading x_s). Task k's gate reads x_k + x_s and
mixes ALL experts, the other tasks' through a stop-gradient sg():

    E_k = experts_k(x_k),  E_s = experts_s(x_s)
    h_k = sum_j softmax(W_k (x_k + x_s))_j [sg(E_1) .. E_k .. sg(E_T), E_s]_j      "All Forward,
    y_k = tower_k(h_k)                                                             Task-specific Backward"

so every task reads every table, but task k's gradient reaches only the shared table and its own.
With num_levels > 1 (the authors stack STEM layers) a shared gate mixes all experts for the next
level's shared input: its task experts enter through sg() here (a deviation from the authors'
code, which lets them through), so the stop-gradient above holds at every depth; the next level's
task inputs are the h_k. Gates are softmax(linear), experts MLPs of `expert_dims`.

The last level's task gates are returned as "gates" [B, tasks, experts] (expert e < T*S is task
e // S's own, the rest shared).

Config keys (conf/model/stem.yaml): embedding_dim, embedding_init_std, num_levels,
num_specific_experts, num_shared_experts, expert_dims, tower_dims, activation, dropout, batch_norm.
Outputs: one per task, named after the task.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from mtlrec.data.spec import DatasetSpec, TaskSpec
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
class StemConfig(CommonConfig):
    num_levels: int = 1
    num_specific_experts: int = 1
    num_shared_experts: int = 1
    expert_dims: list[int] = field(default_factory=lambda: [64, 32])
    tower_dims: list[int] = field(default_factory=lambda: [32])

    def validate(self) -> None:
        super().validate()
        check_positive("model.num_levels", self.num_levels)
        check_positive("model.num_specific_experts", self.num_specific_experts)
        check_positive("model.num_shared_experts", self.num_shared_experts)
        check_dims("model.expert_dims", self.expert_dims)
        check_dims("model.tower_dims", self.tower_dims, allow_empty=True)


class StemLevel(ExpertLevel):
    """T*S task experts + Sh shared experts; T task gates (+ a shared gate below the last level).
    The inputs always come as [T + 1, B, in]: the tasks' copies, then the shared one."""

    stop: torch.Tensor  # a buffer, declared for the type checker

    def __init__(
        self,
        in_dim: int,
        tasks: int,
        per_task: int,
        shared: int,
        expert_dims: list[int],
        shared_gate: bool,
        mlp: tuple[str, float, bool],
    ):
        super().__init__(in_dim, tasks, per_task, shared, expert_dims, mlp)
        t = tasks
        self.units = t + (1 if shared_gate else 0)
        self.gates = GroupedMLP(self.units, in_dim, [], out_dim=self.num_experts)
        # stop[u, e] = 1 where unit u must not send gradient into expert e: the other tasks'
        # experts for a task gate, every task expert for the shared gate.
        stop = torch.zeros(self.units, self.num_experts)
        for u in range(self.units):
            for e, k in enumerate(self.owner):
                stop[u, e] = float(k < t and k != u)
        self.register_buffer("stop", stop, persistent=False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [T + 1, B, in] -> (outputs [units, B, H], task gates [T, B, E])."""
        experts = self.expert_outputs(x)  # [E, B, H]
        shared_in = x[self.tasks]
        gate_in = x[: self.tasks] + shared_in  # task k's gate reads x_k + x_s
        if self.units > self.tasks:
            gate_in = torch.cat([gate_in, shared_in.unsqueeze(0)], 0)
        gates = torch.softmax(self.gates(gate_in), dim=-1)  # [U, B, E]
        # Each unit's view of the experts: sg() where `stop` says so (same forward values).
        stop = self.stop.view(self.units, self.num_experts, 1, 1)
        seen = stop * experts.detach() + (1 - stop) * experts  # [U, E, B, H]
        return torch.einsum("ube,uebh->ubh", gates, seen), gates[: self.tasks]


@register("stem")
class Stem(MultiTaskModel):
    Config = StemConfig

    def __init__(self, spec: DatasetSpec, tasks: tuple[TaskSpec, ...], cfg: StemConfig):
        super().__init__()
        self.output_names = [t.output_name for t in tasks]
        self.output_types = {t.output_name: t.type for t in tasks}
        t = len(tasks)
        self.embedding = FeatureEmbedding(
            spec, cfg.embedding_dim, cfg.embedding_init_std, copies=t + 1
        )
        mlp = (cfg.activation, cfg.dropout, cfg.batch_norm)
        in_dim = self.embedding.out_dim
        self.levels = nn.ModuleList()
        for level in range(cfg.num_levels):
            lvl = StemLevel(
                in_dim,
                t,
                cfg.num_specific_experts,
                cfg.num_shared_experts,
                cfg.expert_dims,
                shared_gate=level < cfg.num_levels - 1,
                mlp=mlp,
            )
            self.levels.append(lvl)
            in_dim = lvl.out_dim
        self.towers = GroupedMLP(t, in_dim, cfg.tower_dims, *mlp, out_dim=1)

    def forward(self, sparse: torch.Tensor, dense: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.embedding(sparse, dense)  # [T + 1, B, in]: the tasks' copies, then the shared
        gates = x
        for lvl in self.levels:
            x, gates = lvl(x)
        y = self.towers(x[: len(self.output_names)]).squeeze(-1)  # [T, B]
        out = {name: y[k] for k, name in enumerate(self.output_names)}
        out["gates"] = gates.transpose(0, 1)  # [B, T, E]
        return out

    def shared_trunk_last_layer(self) -> nn.Parameter | None:
        """The last level's experts' output layer (the shared experts' rows are in it)."""
        last: StemLevel = self.levels[-1]  # type: ignore[assignment]
        return last_weight(last.experts)
