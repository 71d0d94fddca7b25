"""Building blocks shared by the models: MLPs, grouped (batched) MLPs and the fused feature embedding.

Grouped tensors use the layout [G, B, features]: G independent networks (experts, towers, tasks)
run as one batched matrix multiply per layer instead of a Python loop over G.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mtlrec.errors import MtlrecError

ACTIVATIONS = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "tanh": nn.Tanh,
    "prelu": nn.PReLU,
}


# model.hidden_init: how the hidden layers of every MLP (experts, towers, bottoms, gate MLPs) start.
# torch (default): nn.Linear's init (uniform +-1/sqrt(fan_in) weights AND biases); on census its
# tower pre-activations start bias-dominated (input part 0.14x |bias|). glorot: Glorot/Xavier
# uniform weights, zero biases - the default of TF/Keras and PaddlePaddle layers, which the
# reference implementations (PaddleRec's MMoE, PLE, ESMM, AITM, ESCM2; DeepCTR) use. he: Kaiming
# normal (std sqrt(2 / fan_in)), zero biases. None of them removes the census seed-7 trap
# (docs/results.md "Seed study").
HIDDEN_INITS = ("glorot", "he", "torch")


def init_hidden(weight: torch.Tensor, bias: torch.Tensor, fan_in: int, fan_out: int, how: str):
    """Re-initialise one hidden layer in place (model.hidden_init; "torch" leaves it)."""
    if how == "torch":
        return
    with torch.no_grad():
        if how == "glorot":
            bound = math.sqrt(6.0 / (fan_in + fan_out))
            weight.uniform_(-bound, bound)
        else:  # he
            weight.normal_(0.0, math.sqrt(2.0 / fan_in))
        bias.zero_()


def apply_hidden_init(model: nn.Module, how: str) -> None:
    """model.hidden_init on every hidden layer of the model's MLPs and grouped MLPs (their output
    layers keep nn.Linear's init), in module order."""
    for module in model.modules():
        if isinstance(module, GroupedMLP):
            for i in range(module.num_hidden):
                weight, bias = module.linears[i].weight, module.linears[i].bias
                assert isinstance(weight, torch.Tensor) and isinstance(bias, torch.Tensor)
                if i == 0 and module.shared_input:  # one [in, G*d] Linear for all groups
                    fan_in, fan_out = weight.shape[1], weight.shape[0] // module.groups
                else:  # GroupedLinear [G, in, out]
                    fan_in, fan_out = weight.shape[1], weight.shape[2]
                init_hidden(weight, bias, fan_in, fan_out, how)
        elif isinstance(module, MLP):
            for linear in module:
                if isinstance(linear, nn.Linear):
                    init_hidden(
                        linear.weight, linear.bias, linear.in_features, linear.out_features, how
                    )


# model.tower_output_init (MMoE): how the towers' output weights start. torch (default): nn.Linear's
# uniform +-1/sqrt(hidden) draw, symmetric like every reference implementation's (Keras/Paddle:
# Glorot uniform). balanced: the same draw with its signs set to alternate -, +, -, + over each
# tower's hidden units. Why: a ReLU tower whose output weights all share one sign is a convex (or
# concave) function of its input; the draw gives a tower of 8 units that at 2/2^8 of the seeds,
# and Adam then switches units off rather than flip a weight: census seed 7's marital tower ends
# at AUC 0.972 against 0.994 (docs/results.md "Seed study"). Zero weights do not help: the first
# steps move every weight the same way while the output bias is off the base rate.
TOWER_OUTPUT_INITS = ("torch", "balanced")


def init_tower_output(towers: GroupedMLP, how: str) -> None:
    """model.tower_output_init on grouped towers built with an output layer ("torch" leaves it).
    No random draw: every other parameter starts as with "torch"."""
    if how == "torch":
        return
    with torch.no_grad():
        weight = towers.linears[-1].weight  # [towers, hidden, outputs]
        assert isinstance(weight, torch.Tensor)
        weight.abs_()
        weight[:, ::2].neg_()


@dataclass
class CommonConfig:
    """Config keys every model has (conf/model/*.yaml)."""

    name: str = ""
    embedding_dim: int = 16
    embedding_init_std: float = 0.01
    activation: str = "relu"
    dropout: float = 0.0
    batch_norm: bool = False
    hidden_init: str = "torch"

    def validate(self) -> None:
        check_positive("model.embedding_dim", self.embedding_dim)
        if self.hidden_init not in HIDDEN_INITS:
            raise MtlrecError(
                f"model.hidden_init '{self.hidden_init}' is unknown; use one of {list(HIDDEN_INITS)}"
            )
        if not self.embedding_init_std > 0:
            raise MtlrecError(
                f"model.embedding_init_std must be > 0, got {self.embedding_init_std}"
            )
        if self.activation not in ACTIVATIONS:
            raise MtlrecError(
                f"model.activation '{self.activation}' is unknown; use one of {sorted(ACTIVATIONS)}"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise MtlrecError(f"model.dropout must be in [0, 1), got {self.dropout}")


def check_positive(key: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise MtlrecError(f"{key} must be an integer >= 1, got {value!r}")


def check_dims(key: str, dims: Sequence[int], allow_empty: bool = False) -> list[int]:
    dims = list(dims)
    if not dims and not allow_empty:
        raise MtlrecError(f"{key} must list at least one layer size, e.g. [64, 32]; got []")
    for d in dims:
        if isinstance(d, bool) or not isinstance(d, int) or d < 1:
            raise MtlrecError(f"{key} must hold positive integers, got {dims}")
    return dims


class BatchNorm1d(nn.BatchNorm1d):
    """Batch norm that is safe on a training batch of 0 or 1 rows.

    The statistics of a single row are undefined (torch raises "Expected more than 1 value per
    channel"), so such a batch is normalized with the running statistics, as in eval mode, and
    leaves them (and num_batches_tracked) untouched; the affine weight and bias still learn. Every
    other batch behaves exactly like nn.BatchNorm1d. The check is on the shape: no host sync.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and x.shape[0] <= 1:
            return F.batch_norm(
                x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps
            )
        return super().forward(x)


class MLP(nn.Sequential):
    """Linear -> [BatchNorm] -> activation -> [Dropout] for each size in `dims`."""

    def __init__(
        self,
        in_dim: int,
        dims: Sequence[int],
        activation: str = "relu",
        dropout: float = 0.0,
        batch_norm: bool = False,
    ):
        layers: list[nn.Module] = []
        for d in dims:
            layers.append(nn.Linear(in_dim, d))
            if batch_norm:
                layers.append(BatchNorm1d(d))
            layers.append(ACTIVATIONS[activation]())
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            in_dim = d
        super().__init__(*layers)
        self.out_dim = in_dim


class GroupedLinear(nn.Module):
    """G independent Linear layers applied to x [G, B, in] in one batched matmul -> [G, B, out]."""

    def __init__(self, groups: int, in_dim: int, out_dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(groups, in_dim, out_dim))
        self.bias = nn.Parameter(torch.empty(groups, 1, out_dim))
        bound = 1.0 / math.sqrt(in_dim)  # the same init as nn.Linear, per group
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.baddbmm(self.bias, x, self.weight)


class GroupedMLP(nn.Module):
    """G independent MLPs of the same shape, computed together.

    Input: [B, in] shared by all groups (experts reading the same features) or [G, B, in]
    (towers reading their own inputs). Output: [G, B, dims[-1]] (or [G, B, out_dim] when an
    output layer without activation is requested).
    """

    def __init__(
        self,
        groups: int,
        in_dim: int,
        dims: Sequence[int],
        activation: str = "relu",
        dropout: float = 0.0,
        batch_norm: bool = False,
        shared_input: bool = False,
        out_dim: int | None = None,
    ):
        super().__init__()
        self.groups, self.shared_input = groups, shared_input
        sizes = list(dims) + ([out_dim] if out_dim is not None else [])
        self.linears = nn.ModuleList()
        self.norms = nn.ModuleList()
        for i, d in enumerate(sizes):
            if i == 0 and shared_input:
                # One [in, G*d] matmul serves every group when they all read the same input.
                self.linears.append(nn.Linear(in_dim, groups * d))
            else:
                self.linears.append(GroupedLinear(groups, in_dim, d))
            hidden = out_dim is None or i < len(sizes) - 1
            self.norms.append(BatchNorm1d(groups * d) if batch_norm and hidden else nn.Identity())
            in_dim = d
        self.num_hidden = len(dims)
        self.act = ACTIVATIONS[activation]() if self.num_hidden else nn.Identity()
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.out_dim = in_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, linear in enumerate(self.linears):
            if i == 0 and self.shared_input:
                y = linear(x)  # [B, G*d]
                x = y.view(y.shape[0], self.groups, -1).transpose(0, 1)  # [G, B, d]
            else:
                x = linear(x)
            if i < self.num_hidden:
                if not isinstance(self.norms[i], nn.Identity):
                    g, b, d = x.shape
                    x = (
                        self.norms[i](x.transpose(0, 1).reshape(b, g * d))
                        .view(b, g, d)
                        .transpose(0, 1)
                    )
                x = self.dropout(self.act(x))
        return x


class MixtureOfExperts(nn.Module):
    """E experts on one shared input and G softmax gates over them (MMoE: G = tasks, OMoE: G = 1).

        f_i(x) = expert_i(x),  g^k(x) = softmax(W_k x),  m^k = sum_i g^k(x)_i f_i(x)

    forward(x [B, in]) -> (mixtures [G, B, H], gate weights [G, B, E]). Experts and gates each
    run as one batched matmul per layer.
    """

    def __init__(
        self,
        in_dim: int,
        num_experts: int,
        expert_dims: Sequence[int],
        num_gates: int,
        gate_dims: Sequence[int] = (),
        activation: str = "relu",
        dropout: float = 0.0,
        batch_norm: bool = False,
    ):
        super().__init__()
        act, drop, bn = activation, dropout, batch_norm
        self.experts = GroupedMLP(
            num_experts, in_dim, expert_dims, act, drop, bn, shared_input=True
        )
        self.gates = GroupedMLP(
            num_gates, in_dim, gate_dims, act, drop, bn, shared_input=True, out_dim=num_experts
        )
        self.out_dim = self.experts.out_dim

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        experts = self.experts(x)  # [E, B, H]
        gates = torch.softmax(self.gates(x), dim=-1)  # [G, B, E]
        return torch.einsum("gbe,ebh->gbh", gates, experts), gates


class ExpertLevel(nn.Module):
    """The experts of one level of PLE, AdaTT or STEM: `per_task` experts of each of T tasks, then
    `shared` shared ones, all in one GroupedMLP. Expert e reads input row `owner[e]`: task k's
    input for task k's experts, row T (the shared input) for the shared ones. On a `first` level
    every expert reads the one embedding [B, in]: one matmul serves all. Subclasses add the gates
    (built after the experts: the parameters draw their initial values in that order)."""

    expert_input: torch.Tensor  # a buffer, declared for the type checker

    def __init__(
        self,
        in_dim: int,
        tasks: int,
        per_task: int,
        shared: int,
        expert_dims: Sequence[int],
        mlp: tuple[str, float, bool],
        first: bool = False,
    ):
        super().__init__()
        self.tasks, self.first, self.num_experts = tasks, first, tasks * per_task + shared
        self.owner = [k for k in range(tasks) for _ in range(per_task)] + [tasks] * shared
        self.experts = GroupedMLP(self.num_experts, in_dim, expert_dims, *mlp, shared_input=first)
        self.register_buffer("expert_input", torch.tensor(self.owner), persistent=False)
        self.out_dim = self.experts.out_dim

    def expert_outputs(self, x: torch.Tensor) -> torch.Tensor:
        """Every expert on its input: x [B, in] (a first level) or [T (+1), B, in] -> [E, B, H]."""
        return self.experts(x if self.first else x.index_select(0, self.expert_input))


def last_weight(module: nn.Module) -> nn.Parameter:
    """The weight of the last linear layer (nn.Linear or GroupedLinear) registered in `module`:
    inside one MLP / GroupedMLP / MixtureOfExperts' experts, that is its output layer."""
    linears = [m for m in module.modules() if isinstance(m, (nn.Linear, GroupedLinear))]
    if not linears:
        raise ValueError(f"{type(module).__name__} holds no linear layer")
    weight = linears[-1].weight
    assert isinstance(weight, nn.Parameter)
    return weight


def first_table(embedding: nn.Module) -> nn.Parameter:
    """The first fused embedding table's weight (the only one unless fields differ in size):
    the last layer of a trunk that is the shared embedding alone."""
    return embedding.tables[0].weight  # type: ignore[index,union-attr,return-value]


def gate_statistics(mean_gates, task_names: Sequence[str]) -> dict[str, float]:
    """Expert-collapse columns for history.csv from mean gate weights [tasks, experts].

    gate/entropy/{task}: entropy (nats) of the task's mean gate distribution: log(E) when the task
    uses all E experts equally, 0 when it has collapsed onto one expert.
    gate/utilization/expert_{e}: the expert's mean gate weight over tasks (sums to 1 over experts);
    an expert near 0 is unused by every task.
    """
    g = torch.as_tensor(mean_gates, dtype=torch.float64)
    p = g / g.sum(-1, keepdim=True).clamp_min(1e-12)
    entropy = -(p * torch.log(p.clamp_min(1e-12))).sum(-1)
    out = {f"gate/entropy/{t}": float(h) for t, h in zip(task_names, entropy.tolist(), strict=True)}
    for e, u in enumerate(p.mean(0).tolist()):
        out[f"gate/utilization/expert_{e}"] = float(u)
    return out


# Every model embeds its inputs with FieldEmbedding (single ids, bags, sequences, feature groups);
# the old name stays for the models and for code that looks the embedding layer up by type.
from mtlrec.models.features import FieldEmbedding as FeatureEmbedding  # noqa: E402

__all__ = ["FeatureEmbedding"]
