"""PEPNet: Parameter and Embedding Personalized Network (EPNet + PPNet).

Chang, Zhang, Fu, Zang, Guan, Lu, Hu & Gai (Kuaishou), "PEPNet: Parameter and Embedding
Personalized Network for Infusing with Personalized Prior Information", KDD 2023.

Both halves are built from the Gate Neural Unit, a two-layer MLP whose sigmoid output is scaled to
(0, gamma), gamma = gate_scale = 2 as in the paper (1 = leave the input as it is):

    U(x) = gamma * sigmoid( W_2 relu(W_1 x + b_1) + b_2 )

EPNet personalises the shared embedding E (every field, pooled groups, dense features) with a
gate on the domain-side features; sg() is a stop-gradient:

    O_ep = U_ep( E(domain) ++ sg(E) ) (*) E                  (*) elementwise

PPNet personalises every layer of every task tower with gates on the prior (user / item / author)
features, the towers reading O_ep:

    delta^l = U^l_pp( E(prior) ++ sg(O_ep) )   split into one [d_l] part per task
    H^0_k = O_ep,   H^{l+1}_k = act( (delta^l_k (*) H^l_k) W^l_k + b^l_k ),   y_k = the last layer's output

(the gate multiplies each layer's input, the output layer's included, as in the paper's
O^l_pp = delta^l (*) H^l). The feature groups are named in `domain_groups` / `prior_groups` from
the dataset's `feature_groups` (each group one pooled vector, see docs/datasets.md); [] (the
default) means every field: EPNet's gate then reads E itself (with gradient, the sg(E) copy would
repeat it) and PPNet's reads E ++ sg(O_ep).

Config keys (conf/model/pepnet.yaml): embedding_dim, embedding_init_std, domain_groups,
prior_groups, gate_hidden_dim, gate_scale, tower_dims, activation, dropout, batch_norm.
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
from mtlrec.models.features import FieldEmbedding
from mtlrec.models.layers import (
    CommonConfig,
    FeatureEmbedding,
    GroupedMLP,
    check_dims,
    check_positive,
    last_weight,
)
from mtlrec.models.registry import register


@dataclass
class PepnetConfig(CommonConfig):
    tower_dims: list[int] = field(default_factory=lambda: [64, 32])
    domain_groups: list[str] = field(default_factory=list)
    prior_groups: list[str] = field(default_factory=list)
    gate_hidden_dim: int = 64
    gate_scale: float = 2.0

    def validate(self) -> None:
        super().validate()
        check_positive("model.gate_hidden_dim", self.gate_hidden_dim)
        if not (math.isfinite(self.gate_scale) and self.gate_scale > 0):
            raise MtlrecError(f"model.gate_scale must be > 0, got {self.gate_scale!r}")
        check_dims("model.tower_dims", self.tower_dims, allow_empty=True)


class GateNU(nn.Module):
    """gamma * sigmoid(W_2 relu(W_1 x + b_1) + b_2): values in (0, gamma)."""

    def __init__(self, in_dim: int, hidden: int, out_dim: int, scale: float):
        super().__init__()
        self.hidden = nn.Linear(in_dim, hidden)
        self.out = nn.Linear(hidden, out_dim)
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * torch.sigmoid(self.out(torch.relu(self.hidden(x))))


def group_slices(
    embedding: FieldEmbedding, spec: DatasetSpec, names: list[str], key: str
) -> list[tuple[int, int]]:
    """Where each named feature group's pooled vector sits in the embedding's output."""
    starts: dict[str, tuple[int, int]] = {}
    at = 0
    for g, fields in embedding.groups.items():
        width = embedding.dim_of[fields[0]]
        starts[g] = (at, at + width)
        at += width
    for n in names:
        if n not in starts:
            known = sorted(starts) or "none (set dataset.feature_groups)"
            raise MtlrecError(
                f"model.{key}: '{n}' is not a feature group of dataset '{spec.name}'; its groups: "
                f"{known}"
            )
    return [starts[n] for n in names]


def take(x: torch.Tensor, slices: list[tuple[int, int]]) -> torch.Tensor:
    return torch.cat([x[:, a:b] for a, b in slices], dim=-1)


@register("pepnet")
class Pepnet(MultiTaskModel):
    Config = PepnetConfig

    def __init__(self, spec: DatasetSpec, tasks: tuple[TaskSpec, ...], cfg: PepnetConfig):
        super().__init__()
        self.output_names = [t.output_name for t in tasks]
        self.output_types = {t.output_name: t.type for t in tasks}
        t = len(tasks)
        self.embedding = FeatureEmbedding(spec, cfg.embedding_dim, cfg.embedding_init_std)
        e = self.embedding.out_dim
        self.domain = group_slices(self.embedding, spec, list(cfg.domain_groups), "domain_groups")
        self.prior = group_slices(self.embedding, spec, list(cfg.prior_groups), "prior_groups")
        domain_in = sum(b - a for a, b in self.domain) + e
        prior_in = (sum(b - a for a, b in self.prior) if self.prior else e) + e
        h, scale = cfg.gate_hidden_dim, cfg.gate_scale
        self.epnet = GateNU(domain_in, h, e, scale)
        sizes = [e, *cfg.tower_dims]  # the input size of every tower layer, the output layer's last
        self.ppnet = nn.ModuleList(GateNU(prior_in, h, t * d, scale) for d in sizes)
        act, drop, bn = cfg.activation, cfg.dropout, cfg.batch_norm
        self.layers = nn.ModuleList(
            GroupedMLP(t, sizes[i], [sizes[i + 1]], act, drop, bn) for i in range(len(sizes) - 1)
        )
        self.layers.append(GroupedMLP(t, sizes[-1], [], out_dim=1))
        self.tasks = t

    def forward(self, sparse: torch.Tensor, dense: torch.Tensor) -> dict[str, torch.Tensor]:
        emb = self.embedding(sparse, dense)  # [B, e]
        if self.domain:
            domain_in = torch.cat([take(emb, self.domain), emb.detach()], dim=-1)
        else:
            domain_in = emb
        o_ep = self.epnet(domain_in) * emb  # EPNet
        prior = take(emb, self.prior) if self.prior else emb
        prior_in = torch.cat([prior, o_ep.detach()], dim=-1)
        b = emb.shape[0]
        h = o_ep.unsqueeze(0).expand(self.tasks, -1, -1)  # [T, B, e]
        for gate, layer in zip(self.ppnet, self.layers, strict=True):
            delta = gate(prior_in).view(b, self.tasks, -1).transpose(0, 1)  # [T, B, d_l]
            h = layer(delta * h)
        y = h.squeeze(-1)  # [T, B]
        return {name: y[k] for k, name in enumerate(self.output_names)}

    def shared_trunk_last_layer(self) -> nn.Parameter | None:
        """EPNet's gate output layer: the last layer every task's loss goes through."""
        return last_weight(self.epnet)
