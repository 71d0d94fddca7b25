"""DSelect-k: MMoE whose softmax gates are replaced by differentiable k-sparse selectors.

Hazimeh, Zhao, Chowdhery, Sathiamoorthy, Chen, Mazumder, Hong & Chi, "DSelect-k: Differentiable
Selection in the Mixture of Experts with Applications to Multi-Task Learning", NeurIPS 2021.

n experts, m = ceil(log2 n) bits. A gate is k single-expert selectors; selector i of task t holds
m logits z^{t,i}(x) = W_z x (per example, as the paper's MTL experiments) and reads them through
the cubic smooth step

    S(z) = 0 if z <= -gamma/2,   1 if z >= gamma/2,   else -2/gamma^3 z^3 + 3/(2 gamma) z + 1/2

as a "smooth binary encoding" of an expert index j = (b_1 .. b_m):

    r(z)_j = prod_b  [ S(z_b) if b_b(j) = 1 else 1 - S(z_b) ]        (sums to 1 over the 2^m codes)
    g^t(x) = sum_i softmax(W_a x)_i r(z^{t,i}(x))                    k selectors mixed by softmax
    y_t    = tower_t( sum_j g^t(x)_j f_j(x) )

Once S has reached 0 or 1 everywhere, r is one-hot and the gate mixes at most k experts (exact
zeros, so no top-k and no straight-through estimator). The paper's regulariser drives the
selectors there faster: the entropy of each selector's distribution,

    R = entropy_weight * mean_x sum_{t,i} H(r(z^{t,i}(x)))

the model's `extra_loss` (outside task balancing). When n is not a power of two, codes >= n
select nothing: their mass is dropped from the gate and, as in the authors' code, the mass the
selectors put on them is added to the loss (sum_{t,i} (1 - sum_{j<n} r_j)), so they learn to
point at real experts. z's weights start uniform in [-gamma/100, gamma/100] (the authors'
initialiser), so every selector starts close to uniform over the experts.

The mixture weights are returned as "gates" [B, tasks, experts] and logged like MMoE's.

Config keys (conf/model/dselect_k.yaml): embedding_dim, embedding_init_std, num_experts, k,
expert_dims, tower_dims, gamma, entropy_weight, activation, dropout, batch_norm.
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
    FeatureEmbedding,
    GroupedMLP,
    check_dims,
    check_positive,
    last_weight,
)
from mtlrec.models.registry import register


@dataclass
class DSelectKConfig(CommonConfig):
    num_experts: int = 8
    k: int = 2
    expert_dims: list[int] = field(default_factory=lambda: [64, 32])
    tower_dims: list[int] = field(default_factory=lambda: [32])
    gamma: float = 1.0
    entropy_weight: float = 0.1

    def validate(self) -> None:
        super().validate()
        check_positive("model.num_experts", self.num_experts)
        check_positive("model.k", self.k)
        if self.num_experts < 2:
            raise MtlrecError(
                f"model.num_experts must be >= 2 for DSelect-k (a selector picks one of them), "
                f"got {self.num_experts}"
            )
        if self.k > self.num_experts:
            raise MtlrecError(
                f"model.k must be <= model.num_experts ({self.num_experts}), got {self.k}"
            )
        check_dims("model.expert_dims", self.expert_dims)
        check_dims("model.tower_dims", self.tower_dims, allow_empty=True)
        if not (math.isfinite(self.gamma) and self.gamma > 0):
            raise MtlrecError(f"model.gamma (smooth-step width) must be > 0, got {self.gamma!r}")
        if not (math.isfinite(self.entropy_weight) and self.entropy_weight >= 0):
            raise MtlrecError(
                f"model.entropy_weight must be a number >= 0, got {self.entropy_weight!r}"
            )


def smooth_step(z: torch.Tensor, gamma: float) -> torch.Tensor:
    """The cubic smooth step: 0 below -gamma/2, 1 above gamma/2, C1 in between."""
    cubic = -2.0 / gamma**3 * z**3 + 3.0 / (2.0 * gamma) * z + 0.5
    return torch.where(
        z <= -gamma / 2, torch.zeros_like(z), torch.where(z >= gamma / 2, 1.0, cubic)
    )


def code_bits(num_codes_log2: int) -> torch.Tensor:
    """[2^m, m] bits of every code: row j holds the binary digits of j (most significant first)."""
    codes = torch.arange(2**num_codes_log2).unsqueeze(-1)
    shifts = torch.arange(num_codes_log2 - 1, -1, -1)
    return ((codes >> shifts) & 1).float()


def selector_distributions(z: torch.Tensor, bits: torch.Tensor, gamma: float) -> torch.Tensor:
    """r(z): [..., m] logits -> [..., 2^m] distributions over the codes."""
    s = smooth_step(z, gamma).unsqueeze(-2)  # [..., 1, m]
    factors = bits * s + (1 - bits) * (1 - s)  # [..., 2^m, m]
    return factors.prod(-1)


class DSelectKGates(nn.Module):
    """Per-example DSelect-k gates of G tasks over n experts: x [B, in] -> (weights [G, B, n],
    penalty [B]: the selectors' summed entropy, and the mass they put on codes >= n)."""

    bits: torch.Tensor

    def __init__(self, in_dim: int, tasks: int, num_experts: int, k: int, gamma: float):
        super().__init__()
        self.tasks, self.k, self.n, self.gamma = tasks, k, num_experts, gamma
        self.m = max(1, math.ceil(math.log2(num_experts)))
        self.register_buffer("bits", code_bits(self.m), persistent=False)
        self.selector_logits = nn.Linear(in_dim, tasks * k * self.m)  # z
        self.selector_weights = nn.Linear(in_dim, tasks * k)  # alpha (softmax over the k)
        bound = gamma / 100
        nn.init.uniform_(self.selector_logits.weight, -bound, bound)
        nn.init.uniform_(self.selector_logits.bias, -bound, bound)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b = x.shape[0]
        z = self.selector_logits(x).view(b, self.tasks, self.k, self.m)
        r = selector_distributions(z, self.bits, self.gamma)  # [B, G, k, 2^m]
        alpha = torch.softmax(self.selector_weights(x).view(b, self.tasks, self.k), dim=-1)
        valid = r[..., : self.n]
        weights = (alpha.unsqueeze(-1) * valid).sum(2)  # [B, G, n]
        entropy = -(r * torch.log(r.clamp_min(1e-12))).sum(-1)  # [B, G, k]
        penalty = entropy.sum((1, 2))
        if self.n < r.shape[-1]:
            penalty = penalty + (1 - valid.sum(-1)).sum((1, 2))
        return weights.transpose(0, 1), penalty


@register("dselect_k")
class DSelectK(MultiTaskModel):
    Config = DSelectKConfig

    def __init__(self, spec: DatasetSpec, tasks: tuple[TaskSpec, ...], cfg: DSelectKConfig):
        super().__init__()
        self.output_names = [t.output_name for t in tasks]
        self.output_types = {t.output_name: t.type for t in tasks}
        self.embedding = FeatureEmbedding(spec, cfg.embedding_dim, cfg.embedding_init_std)
        in_dim = self.embedding.out_dim
        act, drop, bn = cfg.activation, cfg.dropout, cfg.batch_norm
        self.experts = GroupedMLP(
            cfg.num_experts, in_dim, cfg.expert_dims, act, drop, bn, shared_input=True
        )
        self.gates = DSelectKGates(in_dim, len(tasks), cfg.num_experts, cfg.k, cfg.gamma)
        self.towers = GroupedMLP(
            len(tasks), self.experts.out_dim, cfg.tower_dims, act, drop, bn, out_dim=1
        )
        self.entropy_weight = cfg.entropy_weight

    def forward(self, sparse: torch.Tensor, dense: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.embedding(sparse, dense)
        experts = self.experts(x)  # [E, B, H]
        gates, penalty = self.gates(x)  # [T, B, E], [B]
        mixed = torch.einsum("tbe,ebh->tbh", gates, experts)
        y = self.towers(mixed).squeeze(-1)  # [T, B]
        out = {name: y[k] for k, name in enumerate(self.output_names)}
        out["gates"] = gates.transpose(0, 1)  # [B, T, E]
        out["selector_penalty"] = penalty
        return out

    def extra_loss(
        self, outputs: dict[str, torch.Tensor], labels: torch.Tensor
    ) -> torch.Tensor | None:
        if self.entropy_weight == 0:
            return None
        return self.entropy_weight * outputs["selector_penalty"].float().mean()

    def shared_trunk_last_layer(self) -> nn.Parameter | None:
        """The experts' output layer (every task's gate mixes every expert)."""
        return last_weight(self.experts)
