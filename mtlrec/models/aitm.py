"""AITM: Adaptive Information Transfer Multi-task framework for sequential conversion steps.

Xi et al., "Modeling the Sequential Dependence among Audience Multi-step Conversions with
Multi-task Learning in Targeted Display Advertising", KDD 2021.

For steps t = 1..n of a conversion chain (default: click -> conversion), each label over all
impressions and 1 only if every earlier step happened:

    e     = Embedding(sparse) ++ dense                       shared by all steps
    q_t   = tower_t(e)                                       the step's own representation (tower_dims)
    p_t-1 = info_t(z_t-1)                                    what step t-1 transfers (Linear + activation)
    z_1   = q_1
    z_t   = sum_{u in {p_t-1, q_t}} w_u h3(u),               AIT: attention over the two vectors,
            w_u = softmax_u( <h1(u), h2(u)> / sqrt(d) )      h1, h2, h3 linear maps to d = attention_dim
    y_t   = sigmoid(head_t(z_t))                             p(step t | impression)

    loss  = sum_t w_t BCE(y_t, s_t)  +  calibrator_weight * L_lc,
    L_lc  = mean over impressions of sum_{t>=2} max(y_t - y_t-1, 0)

L_lc is the behavioural expectation calibrator: a later step can never be more likely than an
earlier one (y_t <= y_t-1). It is the model's `extra_loss(outputs, labels)`, which the training
objective adds outside task balancing; history.csv shows it as train/extra_loss.

Config keys (conf/model/aitm.yaml): embedding_dim, embedding_init_std, tower_dims, attention_dim,
calibrator_weight, chain, chain_weights, ctr_weight, ctcvr_weight, activation, dropout, batch_norm.
Outputs (logits): ctr and ctcvr for the default funnel; for an explicit chain one per step, named
after its label column. There is no conditional (cvr) output: AITM predicts each step directly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from mtlrec.data.spec import DatasetSpec, TaskSpec
from mtlrec.errors import MtlrecError
from mtlrec.models.base import MultiTaskModel
from mtlrec.models.esmm import check_chain, resolve_chain
from mtlrec.models.layers import (
    ACTIVATIONS,
    CommonConfig,
    FeatureEmbedding,
    GroupedMLP,
    check_dims,
    check_positive,
    first_table,
)
from mtlrec.models.registry import register


@dataclass
class AitmConfig(CommonConfig):
    tower_dims: list[int] = field(default_factory=lambda: [64, 32])
    attention_dim: int = 32
    calibrator_weight: float = 0.6
    chain: list[str] | None = None
    chain_weights: list[float] | None = None
    ctr_weight: float = 1.0
    ctcvr_weight: float = 1.0

    def validate(self) -> None:
        super().validate()
        check_dims("model.tower_dims", self.tower_dims)
        check_positive("model.attention_dim", self.attention_dim)
        w = self.calibrator_weight
        if not (isinstance(w, (int, float)) and math.isfinite(w) and w >= 0):
            raise MtlrecError(f"model.calibrator_weight must be a number >= 0, got {w!r}")
        check_chain(self.chain, self.chain_weights)


class AdaptiveInformationTransfer(nn.Module):
    """AIT: attention over (transferred p_t-1, own q_t) -> z_t."""

    def __init__(self, dim: int, attention_dim: int):
        super().__init__()
        self.h1 = nn.Linear(dim, attention_dim)
        self.h2 = nn.Linear(dim, attention_dim)
        self.h3 = nn.Linear(dim, dim)
        self.scale = 1.0 / math.sqrt(attention_dim)

    def forward(self, p: torch.Tensor, q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        u = torch.stack([p, q], 1)  # [B, 2, d]
        scores = (self.h1(u) * self.h2(u)).sum(-1) * self.scale  # [B, 2]
        w = torch.softmax(scores, dim=1)
        return (w.unsqueeze(-1) * self.h3(u)).sum(1), w


@register("aitm")
class AITM(MultiTaskModel):
    Config = AitmConfig
    trains_dataset_tasks = False  # its loss tasks come from the funnel

    @classmethod
    def loss_tasks(
        cls, spec: DatasetSpec, selected: tuple[TaskSpec, ...], cfg: AitmConfig
    ) -> tuple[TaskSpec, ...]:
        steps = resolve_chain(
            spec, cfg.chain, cfg.chain_weights, "aitm", (cfg.ctr_weight, cfg.ctcvr_weight)
        )
        return tuple(TaskSpec(s.output, s.label, "binary", weight=s.weight) for s in steps)

    def __init__(self, spec: DatasetSpec, tasks: tuple[TaskSpec, ...], cfg: AitmConfig):
        super().__init__()
        steps = resolve_chain(
            spec, cfg.chain, cfg.chain_weights, "aitm", (cfg.ctr_weight, cfg.ctcvr_weight)
        )
        self.output_names = [s.output for s in steps]
        self.output_types = {name: "binary" for name in self.output_names}
        self.calibrator_weight = float(cfg.calibrator_weight)
        n, act = len(steps), cfg.activation
        self.embedding = FeatureEmbedding(spec, cfg.embedding_dim, cfg.embedding_init_std)
        self.towers = GroupedMLP(
            n,
            self.embedding.out_dim,
            cfg.tower_dims,
            act,
            cfg.dropout,
            cfg.batch_norm,
            shared_input=True,
        )
        d = self.towers.out_dim
        # info_t and AIT_t exist for steps 2..n (step 1 has nothing to receive)
        self.info = nn.ModuleList(
            nn.Sequential(nn.Linear(d, d), ACTIVATIONS[act]()) for _ in range(n - 1)
        )
        self.transfer = nn.ModuleList(
            AdaptiveInformationTransfer(d, cfg.attention_dim) for _ in range(n - 1)
        )
        self.heads = GroupedMLP(n, d, [], out_dim=1)

    def forward(self, sparse: torch.Tensor, dense: torch.Tensor) -> dict[str, torch.Tensor]:
        q = self.towers(self.embedding(sparse, dense))  # [T, B, d]
        z = [q[0]]
        for t in range(1, len(self.output_names)):
            zt, _ = self.transfer[t - 1](self.info[t - 1](z[-1]), q[t])
            z.append(zt)
        y = self.heads(torch.stack(z)).squeeze(-1)  # [T, B]
        return {name: y[k] for k, name in enumerate(self.output_names)}

    def shared_trunk_last_layer(self) -> nn.Parameter | None:
        """The embedding table: the towers are per step (step t's also reached by later steps
        through the information transfer, but that is the model's transfer, not a trunk)."""
        return first_table(self.embedding)

    def extra_loss(
        self, outputs: dict[str, torch.Tensor], labels: torch.Tensor
    ) -> torch.Tensor | None:
        """calibrator_weight * mean_x sum_{t>=2} max(y_t - y_t-1, 0) (probabilities)."""
        if self.calibrator_weight == 0 or len(self.output_names) < 2:
            return None
        p = torch.stack([torch.sigmoid(outputs[n].float()) for n in self.output_names])
        return self.calibrator_weight * torch.relu(p[1:] - p[:-1]).sum(0).mean()
