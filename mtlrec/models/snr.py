"""SNR: Sub-Network Routing, with coding variables learned under an L0 penalty.

Ma et al., "SNR: Sub-Network Routing for Flexible Parameter Sharing in Multi-Task Learning",
AAAI 2019. The shared part is split into `num_subnetworks` lower sub-networks u_1..u_E (MLPs of
`subnetwork_dims` on the embedding); each task t's upper network (its tower) reads a routed sum of
them, where a binary coding variable z_ti opens or closes the connection i -> t:

    SNR-Trans (connection: trans):  v_t = sum_i z_ti W_ti u_i     (W_ti: H x H, one per connection)
    SNR-Aver  (connection: aver):   v_t = sum_i z_ti u_i
    y_t = tower_t(v_t)

The z are relaxed by the hard-concrete distribution (Louizos, Welling & Kingma, "Learning Sparse
Neural Networks through L0 Regularization", ICLR 2018), with a learned log alpha per connection:

    u ~ U(0, 1),  s = sigmoid((log u - log(1 - u) + log alpha) / beta)
    z = min(1, max(0, s (zeta - gamma) + gamma))                        training (one draw per batch)
    z = min(1, max(0, sigmoid(log alpha) (zeta - gamma) + gamma))       evaluation (deterministic)
    E[L0] = sum_ti P(z_ti != 0) = sum_ti sigmoid(log alpha_ti - beta log(-gamma / zeta))

The expected L0 norm times `l0_weight` is the model's `extra_loss` (outside task balancing): it
pushes unneeded connections shut. Defaults beta = 2/3, gamma = -0.1, zeta = 1.1 as in the L0 paper;
log alpha starts at `code_init` (2.0: P(z != 0) = 0.97, every connection open).

The codes are returned as "gates" [B, tasks, subnetworks] (z of each connection; they need not sum
to 1), so history.csv logs gate/{task}/expert_{i} = the mean code of connection i -> task, plus
entropy and utilization like an MoE's gates.

Config keys (conf/model/snr.yaml): embedding_dim, embedding_init_std, num_subnetworks,
subnetwork_dims, connection, tower_dims, l0_weight, beta, gamma, zeta, code_init, activation,
dropout, batch_norm. Outputs: one per task, named after the task.
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
    FeatureEmbedding,
    GroupedMLP,
    check_dims,
    check_positive,
    last_weight,
)
from mtlrec.models.registry import register

CONNECTIONS = ("trans", "aver")


@dataclass
class SnrConfig(CommonConfig):
    num_subnetworks: int = 4
    subnetwork_dims: list[int] = field(default_factory=lambda: [64, 32])
    connection: str = "trans"
    tower_dims: list[int] = field(default_factory=lambda: [32])
    l0_weight: float = 0.001
    beta: float = 2.0 / 3.0
    gamma: float = -0.1
    zeta: float = 1.1
    code_init: float = 2.0

    def validate(self) -> None:
        super().validate()
        check_positive("model.num_subnetworks", self.num_subnetworks)
        check_dims("model.subnetwork_dims", self.subnetwork_dims)
        check_dims("model.tower_dims", self.tower_dims, allow_empty=True)
        if self.connection not in CONNECTIONS:
            raise MtlrecError(
                f"model.connection '{self.connection}' is unknown; use one of {list(CONNECTIONS)}"
            )
        if not (math.isfinite(self.l0_weight) and self.l0_weight >= 0):
            raise MtlrecError(f"model.l0_weight must be a number >= 0, got {self.l0_weight!r}")
        if not self.beta > 0:
            raise MtlrecError(f"model.beta (temperature) must be > 0, got {self.beta!r}")
        if not (self.gamma < 0 and self.zeta > 1):
            raise MtlrecError(
                f"model.gamma must be < 0 and model.zeta > 1 (the stretch interval around [0, 1]), "
                f"got gamma={self.gamma!r}, zeta={self.zeta!r}"
            )


def hard_concrete(
    log_alpha: torch.Tensor, u: torch.Tensor, beta: float, gamma: float, zeta: float
) -> torch.Tensor:
    """A hard-concrete sample for uniform draws `u` in (0, 1)."""
    s = torch.sigmoid((torch.log(u) - torch.log1p(-u) + log_alpha) / beta)
    return (s * (zeta - gamma) + gamma).clamp(0.0, 1.0)


def hard_concrete_mean(log_alpha: torch.Tensor, gamma: float, zeta: float) -> torch.Tensor:
    """The deterministic code used at evaluation."""
    return (torch.sigmoid(log_alpha) * (zeta - gamma) + gamma).clamp(0.0, 1.0)


def expected_l0(log_alpha: torch.Tensor, beta: float, gamma: float, zeta: float) -> torch.Tensor:
    """P(z != 0) of each code: sigmoid(log alpha - beta log(-gamma / zeta))."""
    return torch.sigmoid(log_alpha - beta * math.log(-gamma / zeta))


@register("snr")
class SNR(MultiTaskModel):
    Config = SnrConfig

    def __init__(self, spec: DatasetSpec, tasks: tuple[TaskSpec, ...], cfg: SnrConfig):
        super().__init__()
        self.output_names = [t.output_name for t in tasks]
        self.output_types = {t.output_name: t.type for t in tasks}
        t, e = len(tasks), cfg.num_subnetworks
        self.beta, self.gamma, self.zeta, self.l0_weight = (
            cfg.beta,
            cfg.gamma,
            cfg.zeta,
            cfg.l0_weight,
        )
        self.embedding = FeatureEmbedding(spec, cfg.embedding_dim, cfg.embedding_init_std)
        act, drop, bn = cfg.activation, cfg.dropout, cfg.batch_norm
        self.subnetworks = GroupedMLP(
            e, self.embedding.out_dim, cfg.subnetwork_dims, act, drop, bn, shared_input=True
        )
        h = self.subnetworks.out_dim
        self.log_alpha = nn.Parameter(torch.full((t, e), float(cfg.code_init)))
        self.transform: nn.Parameter | None = None
        if cfg.connection == "trans":
            bound = 1.0 / math.sqrt(h)  # nn.Linear's init, per connection
            self.transform = nn.Parameter(torch.empty(t, e, h, h).uniform_(-bound, bound))
        self.towers = GroupedMLP(t, h, cfg.tower_dims, act, drop, bn, out_dim=1)

    def codes(self) -> torch.Tensor:
        """z [tasks, subnetworks]: one hard-concrete draw per batch in training, else the mean."""
        if not self.training:
            return hard_concrete_mean(self.log_alpha, self.gamma, self.zeta)
        eps = 1e-6  # keeps log u and log(1 - u) finite
        u = torch.rand_like(self.log_alpha).clamp(eps, 1.0 - eps)
        return hard_concrete(self.log_alpha, u, self.beta, self.gamma, self.zeta)

    def forward(self, sparse: torch.Tensor, dense: torch.Tensor) -> dict[str, torch.Tensor]:
        u = self.subnetworks(self.embedding(sparse, dense))  # [E, B, H]
        z = self.codes()  # [T, E]
        if self.transform is None:
            v = torch.einsum("te,ebh->tbh", z, u)  # SNR-Aver
        else:
            v = torch.einsum("ebh,tehk->tbk", u, z[:, :, None, None] * self.transform)
        y = self.towers(v).squeeze(-1)  # [T, B]
        out = {name: y[k] for k, name in enumerate(self.output_names)}
        out["gates"] = z.unsqueeze(0).expand(u.shape[1], -1, -1)  # [B, T, E]
        return out

    def shared_trunk_last_layer(self) -> nn.Parameter | None:
        return last_weight(self.subnetworks)

    def extra_loss(
        self, outputs: dict[str, torch.Tensor], labels: torch.Tensor
    ) -> torch.Tensor | None:
        """l0_weight * expected number of open connections."""
        if self.l0_weight == 0:
            return None
        return self.l0_weight * expected_l0(self.log_alpha, self.beta, self.gamma, self.zeta).sum()
