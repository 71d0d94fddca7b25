"""PLE: Progressive Layered Extraction (CGC when it has one level).

Tang, Liu, Zhao & Gong, "Progressive Layered Extraction (PLE): A Novel Multi-Task Learning (MTL)
Model for Personalized Recommendations", RecSys 2020.

Every level l = 1..L holds, for each task k, `num_specific_experts` experts of its own, and
`num_shared_experts` experts shared by all tasks. With x^1_k = x^1_s = Embedding(sparse) ++ dense:

    E^l_k = [specific experts of task k](x^l_k),   E^l_s = [shared experts](x^l_s)
    x^{l+1}_k = sum_i g^l_k(x^l_k)_i [E^l_k ++ E^l_s]_i       task gate: OWN + SHARED experts only
    x^{l+1}_s = sum_i g^l_s(x^l_s)_i [E^l_1 ++ ... ++ E^l_T ++ E^l_s]_i
                                                           shared gate: ALL experts, levels 1..L-1
    y_k = tower_k(x^{L+1}_k)

g = softmax(linear), as in the paper. The last level has no shared gate (nothing reads it); with
num_levels = 1 the model is the paper's CGC (Customized Gate Control). A level's experts are MLPs
of `expert_dims`; the towers read vectors of size expert_dims[-1].

Gate weights are returned as "gates" [B, tasks, all experts of a level] for the LAST level, in a
global expert order: expert e < T*S (S = num_specific_experts) is task e // S's own expert, the
rest are the shared experts. A task's weights on the experts it cannot see are exactly 0, so
history.csv shows the routing as well as the use of each expert.

Config keys (conf/model/ple.yaml): embedding_dim, embedding_init_std, num_levels,
num_shared_experts, num_specific_experts, expert_dims, tower_dims, activation, dropout, batch_norm.
Outputs: one per task, named after the task; tasks may mix binary and regression.
"""

from __future__ import annotations

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
class PLEConfig(CommonConfig):
    num_levels: int = 2
    num_shared_experts: int = 2
    num_specific_experts: int = 2
    expert_dims: list[int] = field(default_factory=lambda: [64, 32])
    tower_dims: list[int] = field(default_factory=lambda: [32])

    def validate(self) -> None:
        super().validate()
        check_positive("model.num_levels", self.num_levels)
        check_ple_experts(self.num_shared_experts, self.num_specific_experts)
        check_dims("model.expert_dims", self.expert_dims)
        check_dims("model.tower_dims", self.tower_dims, allow_empty=True)


def check_ple_experts(num_shared: int, num_specific: int) -> None:
    for key, v in (("num_shared_experts", num_shared), ("num_specific_experts", num_specific)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise MtlrecError(f"model.{key} must be an integer >= 0, got {v!r}")
    if num_shared + num_specific < 1:
        raise MtlrecError(
            "model.num_shared_experts + model.num_specific_experts must be >= 1 (a task gate "
            "needs at least one expert to mix), got 0"
        )


class ExtractionLevel(ExpertLevel):
    """One PLE level (a CGC): T*S task-specific + Sh shared experts, T task gates, [a shared gate]."""

    task_experts: torch.Tensor  # a buffer, declared for the type checker

    def __init__(
        self,
        in_dim: int,
        num_tasks: int,
        num_shared: int,
        num_specific: int,
        expert_dims: list[int],
        shared_gate: bool,
        first: bool,
        activation: str,
        dropout: float,
        batch_norm: bool,
    ):
        mlp = (activation, dropout, batch_norm)
        super().__init__(in_dim, num_tasks, num_specific, num_shared, expert_dims, mlp, first)
        t, s, sh = num_tasks, num_specific, num_shared
        # The routing table: task k's gate mixes its own S experts, then the Sh shared experts.
        visible = [[k * s + i for i in range(s)] + [t * s + j for j in range(sh)] for k in range(t)]
        self.register_buffer("task_experts", torch.tensor(visible, dtype=torch.long))
        self.task_gates = GroupedMLP(t, in_dim, [], shared_input=first, out_dim=s + sh)
        self.shared_gate = nn.Linear(in_dim, self.num_experts) if shared_gate else None

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """x: [B, in] on the first level, else [T + 1, B, in] (task inputs, then the shared one).

        Returns (task outputs [T, B, H], shared output [B, H] or None, task gates [T, B, S + Sh]).
        """
        experts = self.expert_outputs(x)  # [E, B, H]
        if self.first:  # on the first level every gate reads the embedding too
            task_in = shared_in = x
        else:
            task_in, shared_in = x[: self.tasks], x[self.tasks]
        gates = torch.softmax(self.task_gates(task_in), dim=-1)  # [T, B, S + Sh]
        seen = experts[self.task_experts]  # [T, S + Sh, B, H]
        task_out = torch.einsum("tbe,tebh->tbh", gates, seen)
        shared_out = None
        if self.shared_gate is not None:
            g = torch.softmax(self.shared_gate(shared_in), dim=-1)  # [B, E]
            shared_out = torch.einsum("be,ebh->bh", g, experts)
        return task_out, shared_out, gates


class PleExtractor(nn.Module):
    """The stacked levels of PLE: x [B, in] -> (task representations [T, B, H], gates [B, T, E])."""

    def __init__(
        self,
        in_dim: int,
        num_tasks: int,
        num_levels: int,
        num_shared: int,
        num_specific: int,
        expert_dims: list[int],
        activation: str = "relu",
        dropout: float = 0.0,
        batch_norm: bool = False,
    ):
        super().__init__()
        self.levels = nn.ModuleList()
        for level in range(num_levels):
            lvl = ExtractionLevel(
                in_dim,
                num_tasks,
                num_shared,
                num_specific,
                expert_dims,
                shared_gate=level < num_levels - 1,
                first=level == 0,
                activation=activation,
                dropout=dropout,
                batch_norm=batch_norm,
            )
            self.levels.append(lvl)
            in_dim = lvl.out_dim
        self.out_dim = in_dim

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        for lvl in self.levels:
            task_out, shared_out, gates = lvl(x)
            if shared_out is not None:
                x = torch.cat([task_out, shared_out.unsqueeze(0)], 0)  # [T + 1, B, H]
        last: ExtractionLevel = self.levels[-1]  # type: ignore[assignment]
        # Scatter each task's gate weights into the global expert order (0 = not visible).
        t, b, _ = gates.shape
        full = gates.new_zeros(t, b, last.num_experts)
        full.scatter_(2, last.task_experts.unsqueeze(1).expand(t, b, -1), gates)
        return task_out, full.transpose(0, 1)

    def last_layer(self) -> nn.Parameter:
        """The last level's experts' output layer (shared and task-specific experts, packed)."""
        last: ExtractionLevel = self.levels[-1]  # type: ignore[assignment]
        return last_weight(last.experts)


@register("ple")
class PLE(MultiTaskModel):
    Config = PLEConfig

    def __init__(self, spec: DatasetSpec, tasks: tuple[TaskSpec, ...], cfg: PLEConfig):
        super().__init__()
        self.output_names = [t.output_name for t in tasks]
        self.output_types = {t.output_name: t.type for t in tasks}
        self.embedding = FeatureEmbedding(spec, cfg.embedding_dim, cfg.embedding_init_std)
        self.extractor = PleExtractor(
            self.embedding.out_dim,
            len(tasks),
            cfg.num_levels,
            cfg.num_shared_experts,
            cfg.num_specific_experts,
            cfg.expert_dims,
            cfg.activation,
            cfg.dropout,
            cfg.batch_norm,
        )
        self.towers = GroupedMLP(
            len(tasks),
            self.extractor.out_dim,
            cfg.tower_dims,
            cfg.activation,
            cfg.dropout,
            cfg.batch_norm,
            out_dim=1,
        )

    def forward(self, sparse: torch.Tensor, dense: torch.Tensor) -> dict[str, torch.Tensor]:
        reps, gates = self.extractor(self.embedding(sparse, dense))  # [T, B, H], [B, T, E]
        y = self.towers(reps).squeeze(-1)  # [T, B]
        out = {name: y[k] for k, name in enumerate(self.output_names)}
        out["gates"] = gates
        return out

    def shared_trunk_last_layer(self) -> nn.Parameter | None:
        """The last level's experts' output layer; its task-specific experts' rows, reached by one
        task each, are left out of GradNorm's norm (sharing.py)."""
        return self.extractor.last_layer()
