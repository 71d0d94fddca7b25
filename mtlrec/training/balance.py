"""Task balancing: how the per-task losses of a step become one backward pass (`balance=` group).

Every balancer gets the per-task mean losses L [T] of a batch (and an optional model-specific extra
term, e.g. AITM's calibrator, which is added unweighted and never balanced), computes the
gradients into `.grad` and reports its current task weights once per epoch (`weight/{task}` in
history.csv). A balancer is an `nn.Module`: its parameters (uncertainty's log-variances, GradNorm's
weights) are trained by the run's optimizer and saved in checkpoints with its buffers.

    fixed        L_total = sum_k w_k L_k, w_k = the task's weight (TaskSpec.weight, e.g. model.ctr_weight),
                 or balance.weights.{task} when given.
    uncertainty  Kendall, Gal & Cipolla, "Multi-Task Learning Using Uncertainty to Weigh Losses for
                 Scene Geometry and Semantics", CVPR 2018. With s_k = log sigma_k^2 learned:
                   regression     1/(2 sigma_k^2) L_k + log sigma_k = 0.5 exp(-s_k) L_k + s_k / 2
                   classification 1/sigma_k^2 L_k + log sigma_k     =     exp(-s_k) L_k + s_k / 2
                 logged weight = 0.5 exp(-s_k) (regression) or exp(-s_k) (binary).
    gradnorm     Chen et al., "GradNorm: Gradient Normalization for Adaptive Loss Balancing in Deep
                 Multitask Networks", ICML 2018. On the last shared layer W:
                   G_k = ||grad_W w_k L_k||,  r_k = (L_k / L_k(0)) / mean_j (L_j / L_j(0))
                   L_grad = sum_k | G_k - mean_j(G_j) * r_k^alpha |   (the target is a constant)
                 w gets grad_w L_grad = sign(G_k - target_k) ||grad_W L_k||, the optimizer steps it,
                 and w is renormalised to sum_k w_k = T before each use. The network gets
                 grad of sum_k w_k L_k (w constant there).
    dwa          Liu, Johns & Davison, "End-to-End Multi-Task Learning with Attention", CVPR 2019.
                   w_k(t) = T exp(r_k(t-1) / temperature) / sum_j exp(r_j(t-1) / temperature),
                   r_k(t-1) = L_k(t-1) / L_k(t-2)   (epoch means of the training loss);
                 w_k = 1 for the first two epochs.
    pcgrad       Yu et al., "Gradient Surgery for Multi-Task Learning", NeurIPS 2020. On the shared
                 parameters, for each task i (in a random order of the other tasks j):
                   g_i <- g_i - min(g_i . g_j, 0) / ||g_j||^2 g_j
                 then g = sum_i g_i; task-specific parameters get their plain gradient sum. The
                 task gradients are of w_k L_k (fixed weights).

Shared parameters are found once, at the first step, from the per-task gradients: a parameter
tensor is shared if at least one of its elements gets a non-zero gradient from two or more tasks
(so packed per-task towers or gates - one tensor holding every task's slice - are task-specific),
and within a shared layer (not an embedding table), rows (dim 0) that exactly one task touches are
that task's slice (PLE's task-specific experts stored next to the shared ones) and are summed, not
projected. Known
limitation of this first-step rule: a hidden unit of a shared layer that only one task happened to
reach in the first batch (e.g. a ReLU unit active only on non-clicked rows, which a clicked-rows
task never sees) is treated as that task's too. GradNorm's "last shared layer" is the last shared
weight matrix (not a bias) in registration order, its norm taken over the shared rows: the experts'
output layer for MMoE and PLE, the bottom's last layer for shared-bottom, the CTR tower's output
layer for ESMM (both of its losses go through it), and the shared gate for OMoE (registered after
its experts).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from mtlrec.data.spec import TaskSpec
from mtlrec.errors import MtlrecError

BALANCERS: dict[str, type[Balancer]] = {}


def _register(name: str) -> Callable[[type[Balancer]], type[Balancer]]:
    def deco(cls: type[Balancer]) -> type[Balancer]:
        BALANCERS[name] = cls
        cls.name = name
        return cls

    return deco


class Balancer(nn.Module):
    """Base: static weights, plain weighted sum. Subclasses override `backward` / `current_weights`."""

    name = "fixed"
    keys: tuple[str, ...] = ("weights",)

    def __init__(self, tasks: tuple[TaskSpec, ...], model: nn.Module, cfg: Mapping[str, Any]):
        super().__init__()
        self.task_names = [t.name for t in tasks]
        self.num_tasks = len(tasks)
        self.register_buffer(
            "static_weights",
            torch.tensor([t.weight for t in tasks], dtype=torch.float32),
            persistent=False,
        )
        self._extra_sum: torch.Tensor | None = None
        self._extra_steps = 0

    # -- what the trainer calls -------------------------------------------------------------------
    def backward(
        self, losses: torch.Tensor, model: nn.Module, extra: torch.Tensor | None = None
    ) -> None:
        """Gradients of the balanced loss into `.grad` (the caller zeroed them)."""
        total = (self.current_weights() * losses).sum()
        (total + self._track_extra(extra)).backward()

    def current_weights(self) -> torch.Tensor:
        return self.static_weights

    def end_epoch(self) -> dict[str, float]:
        """Columns for this epoch's history row: the task weights (and method-specific values)."""
        row = {
            f"weight/{n}": float(w)
            for n, w in zip(self.task_names, self.current_weights().tolist(), strict=True)
        }
        if self._extra_sum is not None:
            row["train/extra_loss"] = float(self._extra_sum.item()) / max(self._extra_steps, 1)
            self._extra_sum, self._extra_steps = None, 0
        return row

    # -- helpers ---------------------------------------------------------------------------------
    def _track_extra(self, extra: torch.Tensor | None) -> torch.Tensor | float:
        if extra is None:
            return 0.0
        d = extra.detach()
        self._extra_sum = d if self._extra_sum is None else self._extra_sum + d
        self._extra_steps += 1
        return extra


@_register("fixed")
class Fixed(Balancer):
    keys = ("weights",)

    def __init__(self, tasks: tuple[TaskSpec, ...], model: nn.Module, cfg: Mapping[str, Any]):
        super().__init__(tasks, model, cfg)
        overrides = cfg.get("weights") or {}
        unknown = sorted(set(overrides) - set(self.task_names))
        if unknown:
            raise MtlrecError(
                f"balance.weights names unknown task(s) {unknown}; the trained tasks are {self.task_names}"
            )
        for name, w in overrides.items():
            if not (isinstance(w, (int, float)) and math.isfinite(w) and w >= 0):
                raise MtlrecError(f"balance.weights.{name} must be a number >= 0, got {w!r}")
            self.static_weights[self.task_names.index(name)] = float(w)


@_register("uncertainty")
class Uncertainty(Balancer):
    keys = ("init_log_var",)

    def __init__(self, tasks: tuple[TaskSpec, ...], model: nn.Module, cfg: Mapping[str, Any]):
        super().__init__(tasks, model, cfg)
        init = float(cfg.get("init_log_var", 0.0))
        self.log_vars = nn.Parameter(torch.full((self.num_tasks,), init))  # s_k = log sigma_k^2
        # 1 for classification (1/sigma^2 L), 1/2 for regression (1/(2 sigma^2) L)
        self.register_buffer(
            "scale",
            torch.tensor([0.5 if t.type == "regression" else 1.0 for t in tasks]),
            persistent=False,
        )

    def loss(self, losses: torch.Tensor) -> torch.Tensor:
        return (self.scale * torch.exp(-self.log_vars) * losses + 0.5 * self.log_vars).sum()

    def backward(
        self, losses: torch.Tensor, model: nn.Module, extra: torch.Tensor | None = None
    ) -> None:
        (self.loss(losses) + self._track_extra(extra)).backward()

    def current_weights(self) -> torch.Tensor:
        return (self.scale * torch.exp(-self.log_vars)).detach()

    def end_epoch(self) -> dict[str, float]:
        row = super().end_epoch()
        for n, s in zip(self.task_names, self.log_vars.tolist(), strict=True):
            row[f"log_var/{n}"] = float(s)
        return row


@_register("dwa")
class DynamicWeightAverage(Balancer):
    keys = ("temperature",)

    def __init__(self, tasks: tuple[TaskSpec, ...], model: nn.Module, cfg: Mapping[str, Any]):
        super().__init__(tasks, model, cfg)
        self.temperature = float(cfg.get("temperature", 2.0))
        if not self.temperature > 0:
            raise MtlrecError(f"balance.temperature must be > 0, got {self.temperature!r}")
        t = self.num_tasks
        self.register_buffer("weights", torch.ones(t))
        # epoch-mean losses of the last two finished epochs (NaN until there are two)
        self.register_buffer("previous", torch.full((2, t), math.nan))
        self.register_buffer("epoch_sum", torch.zeros(t))
        self.register_buffer("epoch_steps", torch.zeros(()))

    @staticmethod
    def weights_from(
        last: torch.Tensor, before_last: torch.Tensor, temperature: float
    ) -> torch.Tensor:
        """w_k = T softmax_k(r_k / temperature), r_k = L_k(t-1) / L_k(t-2)."""
        r = last / before_last.clamp_min(1e-12)
        return len(r) * torch.softmax(r / temperature, dim=0)

    def backward(
        self, losses: torch.Tensor, model: nn.Module, extra: torch.Tensor | None = None
    ) -> None:
        self.epoch_sum += losses.detach()
        self.epoch_steps += 1
        super().backward(losses, model, extra)

    def current_weights(self) -> torch.Tensor:
        return self.weights

    def end_epoch(self) -> dict[str, float]:
        row = super().end_epoch()  # the weights used during this epoch
        mean = self.epoch_sum / self.epoch_steps.clamp_min(1)
        self.previous.copy_(torch.stack([mean, self.previous[0]]))
        if not torch.isnan(self.previous[1]).any():
            self.weights.copy_(
                self.weights_from(self.previous[0], self.previous[1], self.temperature)
            )
        self.epoch_sum.zero_()
        self.epoch_steps.zero_()
        return row


def task_gradients(
    losses: torch.Tensor, params: list[nn.Parameter]
) -> list[list[torch.Tensor | None]]:
    """Per-task gradients [task][param] (None where a task does not reach a parameter)."""
    out = []
    for k in range(len(losses)):
        grads = torch.autograd.grad(losses[k], params, retain_graph=True, allow_unused=True)
        out.append(list(grads))
    return out


def shared_rows(
    params: list[nn.Parameter],
    grads: list[list[torch.Tensor | None]],
    whole: frozenset[int] = frozenset(),
) -> list[torch.Tensor | None]:
    """Which parts of each parameter the tasks share, from per-task gradients.

    None: the parameter is task-specific (no element gets a non-zero gradient from two tasks).
    Else a bool mask over its rows (dim 0): False for rows only ONE task touches - the slices of
    one task inside a packed tensor (e.g. PLE's task-specific experts stored with the shared ones,
    or per-task gate rows) - True for rows two or more tasks touch, or none (yet). Parameters whose
    index is in `whole` (embedding tables: a row is an id, which any task may see in a later batch)
    are never split.
    """
    out: list[torch.Tensor | None] = []
    for i, p in enumerate(params):
        nonzero = [g[i] != 0 for g in grads if g[i] is not None]
        if len(nonzero) < 2 or not bool((torch.stack(nonzero).sum(0) >= 2).any()):
            out.append(None)
            continue
        if i in whole:
            out.append(torch.ones(p.shape[0], dtype=torch.bool, device=p.device))
            continue
        touched = torch.stack([nz.reshape(p.shape[0], -1).any(1) for nz in nonzero]).sum(0)
        out.append(touched != 1)
    return out


def find_shared(params: list[nn.Parameter], grads: list[list[torch.Tensor | None]]) -> list[bool]:
    """A parameter is shared if some element gets a non-zero gradient from two or more tasks."""
    return [m is not None for m in shared_rows(params, grads)]


class _NeedsShared(Balancer):
    """Balancers that work on the parameters shared by the tasks (found at the first step)."""

    def __init__(self, tasks: tuple[TaskSpec, ...], model: nn.Module, cfg: Mapping[str, Any]):
        super().__init__(tasks, model, cfg)
        self._params: list[nn.Parameter] | None = None
        self._names: list[str] = []
        self._rows: list[torch.Tensor | None] = []

    def _discover(self, losses: torch.Tensor, model: nn.Module) -> list[list[torch.Tensor | None]]:
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        params = [p for _, p in named]
        grads = task_gradients(losses, params)
        self._params, self._names = params, [n for n, _ in named]
        tables = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
        whole = frozenset(i for i, p in enumerate(params) if id(p) in tables)
        self._rows = shared_rows(params, grads, whole)
        return grads

    def shared_parameters(self) -> list[nn.Parameter]:
        assert self._params is not None
        return [p for p, m in zip(self._params, self._rows, strict=True) if m is not None]


@_register("pcgrad")
class PCGrad(_NeedsShared):
    keys = ("seed",)

    def __init__(self, tasks: tuple[TaskSpec, ...], model: nn.Module, cfg: Mapping[str, Any]):
        super().__init__(tasks, model, cfg)
        self.generator = torch.Generator().manual_seed(int(cfg.get("seed", 0)))
        # conflicting task pairs (g_i . g_j < 0 on the shared parameters) and pairs seen this epoch
        self.register_buffer("conflicts", torch.zeros(()), persistent=False)
        self.pairs = 0

    def get_extra_state(self) -> dict:
        # the projection order's generator, so a resumed run draws the same orders
        return {"generator": self.generator.get_state()}

    def set_extra_state(self, state: dict) -> None:
        self.generator.set_state(state["generator"])

    @staticmethod
    def project(grads: torch.Tensor, orders: list[list[int]]) -> torch.Tensor:
        """PCGrad on flattened task gradients [T, P]: the sum of the projected gradients [P].

        orders[i] is the order in which task i is projected against the others. No host sync:
        the "if conflicting" test is min(dot, 0).
        """
        out = []
        sq = (grads * grads).sum(1).clamp_min(1e-20)
        for i in range(grads.shape[0]):
            g = grads[i].clone()
            for j in orders[i]:
                dot = torch.dot(g, grads[j])
                g = g - dot.clamp(max=0.0) / sq[j] * grads[j]
            out.append(g)
        return torch.stack(out).sum(0)

    def backward(
        self, losses: torch.Tensor, model: nn.Module, extra: torch.Tensor | None = None
    ) -> None:
        weighted = self.current_weights() * losses
        if self._params is None:
            grads = self._discover(weighted, model)
        else:
            grads = task_gradients(weighted, self._params)
        params, rows = self._params, self._rows
        assert params is not None
        extra_grads: list[torch.Tensor | None] = [None] * len(params)
        extra = self._track_extra(extra)
        if isinstance(extra, torch.Tensor):
            extra_grads = list(torch.autograd.grad(extra, params, allow_unused=True))
        t = self.num_tasks
        idx = [i for i, m in enumerate(rows) if m is not None]

        def shared_part(k: int, i: int) -> torch.Tensor:
            g = grads[k][i]
            return (g if g is not None else torch.zeros_like(params[i]))[rows[i]].reshape(-1)

        merged_rows: dict[int, torch.Tensor] = {}
        if idx:
            flat = torch.stack([torch.cat([shared_part(k, i) for i in idx]) for k in range(t)])
            orders = []
            for i in range(t):
                others = [j for j in range(t) if j != i]
                perm = torch.randperm(len(others), generator=self.generator).tolist()
                orders.append([others[p] for p in perm])
            merged = self.project(flat, orders)
            dots = flat @ flat.T
            self.conflicts += (dots.triu(1) < 0).sum()
            self.pairs += t * (t - 1) // 2
            offset = 0
            for i in idx:
                shape = (int(rows[i].sum()), *params[i].shape[1:])
                n = math.prod(shape)
                merged_rows[i] = merged[offset : offset + n].view(shape)
                offset += n
        for i, p in enumerate(params):
            # plain sum of the task gradients; on shared rows, the projected sum instead
            parts = [grads[k][i] for k in range(t) if grads[k][i] is not None]
            if not parts and extra_grads[i] is None:
                continue
            g = torch.stack(parts).sum(0) if parts else torch.zeros_like(p)
            if i in merged_rows:
                g[rows[i]] = merged_rows[i]
            if extra_grads[i] is not None:
                g = g + extra_grads[i]
            p.grad = g if p.grad is None else p.grad + g

    def end_epoch(self) -> dict[str, float]:
        row = super().end_epoch()
        if self.pairs:
            row["pcgrad/conflict_rate"] = float(self.conflicts.item()) / self.pairs
        self.conflicts.zero_()
        self.pairs = 0
        return row


@_register("gradnorm")
class GradNorm(_NeedsShared):
    keys = ("alpha",)

    def __init__(self, tasks: tuple[TaskSpec, ...], model: nn.Module, cfg: Mapping[str, Any]):
        super().__init__(tasks, model, cfg)
        self.alpha = float(cfg.get("alpha", 1.5))
        if not self.alpha >= 0:
            raise MtlrecError(f"balance.alpha must be >= 0, got {self.alpha!r}")
        self.task_weights = nn.Parameter(torch.ones(self.num_tasks))
        self.register_buffer("initial_losses", torch.full((self.num_tasks,), math.nan))
        self._have_initial = False
        self._layer: int | None = None  # index into the model's parameters

    def last_shared_layer(self) -> int:
        """Index of the last shared weight matrix (not a bias) in registration order."""
        assert self._params is not None
        matrices = [
            i
            for i, (p, name, m) in enumerate(
                zip(self._params, self._names, self._rows, strict=True)
            )
            if m is not None and p.dim() >= 2 and not name.endswith("bias")
        ]
        if not matrices:
            raise MtlrecError(
                "balance=gradnorm needs a layer shared by the tasks, and this model shares none "
                "(e.g. model=single_task); use balance=fixed, uncertainty or dwa"
            )
        return matrices[-1]

    @torch.no_grad()
    def renormalize(self) -> None:
        """sum_k w_k = T, w_k > 0 (the paper's renormalisation after each update)."""
        w = self.task_weights.clamp_min(1e-6)
        self.task_weights.copy_(w * self.num_tasks / w.sum())

    def weight_gradient(
        self, losses: torch.Tensor, grad_norms: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(grad of L_grad w.r.t. w, the targets) from losses [T] and ||grad_W L_k|| [T]."""
        w = self.task_weights.detach()
        g = w * grad_norms  # G_k
        ratio = losses.detach() / self.initial_losses.clamp_min(1e-12)
        r = ratio / ratio.mean()
        target = g.mean() * r**self.alpha
        return torch.sign(g - target) * grad_norms, target

    def backward(
        self, losses: torch.Tensor, model: nn.Module, extra: torch.Tensor | None = None
    ) -> None:
        if self.num_tasks == 1:  # one task: nothing to balance (e.g. model=cvr_base)
            (self.task_weights.detach() * losses).sum().add(self._track_extra(extra)).backward()
            return
        if self._params is None:
            self._discover(losses, model)
            self._layer = self.last_shared_layer()
        if not self._have_initial:
            self.initial_losses.copy_(losses.detach())
            self._have_initial = True
        self.renormalize()
        assert self._layer is not None and self._params is not None
        layer, rows = self._params[self._layer], self._rows[self._layer]
        norms = []
        for k in range(self.num_tasks):
            (g,) = torch.autograd.grad(losses[k], layer, retain_graph=True, allow_unused=True)
            # the norm over the layer's shared rows (a packed tensor's task slices excluded)
            norms.append(g[rows].norm() if g is not None else losses.new_zeros(()))
        grad_w, _ = self.weight_gradient(losses, torch.stack(norms))
        total = (self.task_weights.detach() * losses).sum() + self._track_extra(extra)
        total.backward()
        self.task_weights.grad = grad_w

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # noqa: ANN001
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._have_initial = bool(torch.isfinite(self.initial_losses).all())

    def current_weights(self) -> torch.Tensor:
        w = self.task_weights.detach().clamp_min(1e-6)
        return w * self.num_tasks / w.sum()


def make_balancer(
    cfg: Mapping[str, Any] | None, tasks: tuple[TaskSpec, ...], model: nn.Module
) -> Balancer:
    """The balancer named by the `balance` config group (None = fixed task weights)."""
    cfg = dict(cfg or {"name": "fixed"})
    name = cfg.get("name", "fixed")
    if name not in BALANCERS:
        raise MtlrecError(f"balance.name '{name}' is unknown; valid: {sorted(BALANCERS)}")
    cls = BALANCERS[name]
    unknown = sorted(set(cfg) - {"name", *cls.keys})
    if unknown:
        raise MtlrecError(
            f"balance={name} has no key(s) {unknown}; its keys are {sorted(['name', *cls.keys])}"
        )
    return cls(tasks, model, cfg)
