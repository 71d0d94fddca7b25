"""SNR: Sub-Network Routing, with coding variables learned under an L0 penalty.

Ma et al., "SNR: Sub-Network Routing for Flexible Parameter Sharing in Multi-Task Learning",
AAAI 2019. The shared layers are split into two levels of sub-networks: `num_subnetworks` lower
sub-networks u_1..u_L (MLPs of `subnetwork_dims` on the embedding) and `num_upper_subnetworks`
upper sub-networks h_1..h_U (MLPs of `upper_subnetwork_dims`); binary coding variables open or
close each connection lower i -> upper j, and the task towers sit above the upper level, each
reading a routed sum of the upper sub-networks (coding variables upper j -> task t):

    SNR-Trans (connection: trans):  v_j = sum_i z_ji W_ji u_i,   s_t = sum_j c_tj M_tj h_j(v_j)
    SNR-Aver  (connection: aver):   v_j = sum_i z_ji u_i,        s_t = sum_j c_tj h_j(v_j)
    y_t = tower_t(s_t)

(W_ji, M_tj: one H x H matrix per connection.) The paper routes between the two levels; the
routing into the towers uses the same kind of codes, so a task can also drop an upper
sub-network (with one upper sub-network per task and codes shut, each task gets its own).

The z are relaxed by the hard-concrete distribution (Louizos, Welling & Kingma, "Learning Sparse
Neural Networks through L0 Regularization", ICLR 2018), with a learned log alpha per connection:

    u ~ U(0, 1),  s = sigmoid((log u - log(1 - u) + log alpha) / beta)
    z = min(1, max(0, s (zeta - gamma) + gamma))                        training (one draw per batch)
    z = min(1, max(0, sigmoid(log alpha) (zeta - gamma) + gamma))       evaluation (deterministic)
    E[L0] = sum P(z != 0) = sum sigmoid(log alpha - beta log(-gamma / zeta))   over all codes

The expected L0 norm of every code (both routings) times `l0_weight` is the model's `extra_loss`
(outside task balancing): it pushes unneeded connections shut. Defaults beta = 2/3, gamma = -0.1, zeta = 1.1 as in the L0 paper;
log alpha starts at `code_init` (2.0: P(z != 0) = 0.97, every connection open).

The task codes are returned as "gates" [B, tasks, upper subnetworks] (c of each connection; they
need not sum to 1), so history.csv logs gate/{task}/expert_{j} = the mean code of upper j -> task,
plus entropy and utilization like an MoE's gates.

Config keys (conf/model/snr.yaml): embedding_dim, embedding_init_std, num_subnetworks,
subnetwork_dims, num_upper_subnetworks, upper_subnetwork_dims, connection, tower_dims, l0_weight, beta, gamma, zeta, code_init, activation,
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
    num_upper_subnetworks: int = 2
    upper_subnetwork_dims: list[int] = field(default_factory=lambda: [32])
    connection: str = "trans"
    tower_dims: list[int] = field(default_factory=lambda: [16])
    l0_weight: float = 0.001
    beta: float = 2.0 / 3.0
    gamma: float = -0.1
    zeta: float = 1.1
    code_init: float = 2.0

    def validate(self) -> None:
        super().validate()
        check_positive("model.num_subnetworks", self.num_subnetworks)
        check_dims("model.subnetwork_dims", self.subnetwork_dims)
        check_positive("model.num_upper_subnetworks", self.num_upper_subnetworks)
        check_dims("model.upper_subnetwork_dims", self.upper_subnetwork_dims)
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


class Routing(nn.Module):
    """Hard-concrete codes z [out, in] from `inputs` sub-networks to `outputs` receivers, with a
    matrix per connection (trans) or none (aver): x [in, B, H] -> [out, B, H']."""

    def __init__(self, outputs: int, inputs: int, dim: int, out_dim: int, trans: bool, init: float):
        super().__init__()
        self.log_alpha = nn.Parameter(torch.full((outputs, inputs), float(init)))
        self.transform: nn.Parameter | None = None
        if trans:
            bound = 1.0 / math.sqrt(dim)  # nn.Linear's init, per connection
            self.transform = nn.Parameter(
                torch.empty(outputs, inputs, dim, out_dim).uniform_(-bound, bound)
            )

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        if self.transform is None:
            return torch.einsum("oi,ibh->obh", z, x)  # SNR-Aver
        return torch.einsum("ibh,oihk->obk", x, z[:, :, None, None] * self.transform)


@register("snr")
class SNR(MultiTaskModel):
    Config = SnrConfig

    def __init__(self, spec: DatasetSpec, tasks: tuple[TaskSpec, ...], cfg: SnrConfig):
        super().__init__()
        self.output_names = [t.output_name for t in tasks]
        self.output_types = {t.output_name: t.type for t in tasks}
        t, lower, upper = len(tasks), cfg.num_subnetworks, cfg.num_upper_subnetworks
        self.beta, self.gamma, self.zeta, self.l0_weight = (
            cfg.beta,
            cfg.gamma,
            cfg.zeta,
            cfg.l0_weight,
        )
        self.embedding = FeatureEmbedding(spec, cfg.embedding_dim, cfg.embedding_init_std)
        act, drop, bn = cfg.activation, cfg.dropout, cfg.batch_norm
        trans = cfg.connection == "trans"
        self.subnetworks = GroupedMLP(
            lower, self.embedding.out_dim, cfg.subnetwork_dims, act, drop, bn, shared_input=True
        )
        h = self.subnetworks.out_dim
        # aver sums the lower outputs as they are: the upper level reads vectors of size H
        self.lower_routing = Routing(upper, lower, h, h, trans, cfg.code_init)
        self.upper_subnetworks = GroupedMLP(upper, h, cfg.upper_subnetwork_dims, act, drop, bn)
        hu = self.upper_subnetworks.out_dim
        self.task_routing = Routing(t, upper, hu, hu, trans, cfg.code_init)
        self.towers = GroupedMLP(t, hu, cfg.tower_dims, act, drop, bn, out_dim=1)

    def codes(self, log_alpha: torch.Tensor) -> torch.Tensor:
        """z of one routing: one hard-concrete draw per batch in training, else the mean."""
        if not self.training:
            return hard_concrete_mean(log_alpha, self.gamma, self.zeta)
        eps = 1e-6  # keeps log u and log(1 - u) finite
        u = torch.rand_like(log_alpha).clamp(eps, 1.0 - eps)
        return hard_concrete(log_alpha, u, self.beta, self.gamma, self.zeta)

    def forward(self, sparse: torch.Tensor, dense: torch.Tensor) -> dict[str, torch.Tensor]:
        u = self.subnetworks(self.embedding(sparse, dense))  # [L, B, H]
        v = self.lower_routing(u, self.codes(self.lower_routing.log_alpha))  # [U, B, H]
        upper = self.upper_subnetworks(v)  # [U, B, Hu]
        c = self.codes(self.task_routing.log_alpha)  # [T, U]
        s = self.task_routing(upper, c)  # [T, B, Hu]
        y = self.towers(s).squeeze(-1)  # [T, B]
        out = {name: y[k] for k, name in enumerate(self.output_names)}
        out["gates"] = c.unsqueeze(0).expand(u.shape[1], -1, -1)  # [B, T, U]
        return out

    def shared_trunk_last_layer(self) -> nn.Parameter | None:
        """The upper sub-networks' output layer: the last level every task routes through."""
        return last_weight(self.upper_subnetworks)

    def extra_loss(
        self, outputs: dict[str, torch.Tensor], labels: torch.Tensor
    ) -> torch.Tensor | None:
        """l0_weight * expected number of open connections (both routings)."""
        if self.l0_weight == 0:
            return None
        penalty = [
            expected_l0(r.log_alpha, self.beta, self.gamma, self.zeta).sum()
            for r in (self.lower_routing, self.task_routing)
        ]
        return self.l0_weight * (penalty[0] + penalty[1])
