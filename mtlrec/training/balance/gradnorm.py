"""GradNorm: Chen et al., "GradNorm: Gradient Normalization for Adaptive Loss Balancing in Deep
Multitask Networks", ICML 2018.

On the last shared layer W:

    G_k = ||grad_W w_k L_k||,  r_k = (L_k / L_k(0)) / mean_j (L_j / L_j(0))
    L_grad = sum_k | G_k - mean_j(G_j) * r_k^alpha |   (the target is a constant)

w gets grad_w L_grad = sign(G_k - target_k) ||grad_W L_k||, the optimizer steps it, and w is
renormalised to sum_k w_k = T before each use. The network gets grad of sum_k w_k L_k (w constant
there). W is the layer the model names with `shared_trunk_last_layer()` (every mtlrec model
names its own: the experts' output layer for MMoE, OMoE and PLE, the bottom's last layer for
shared-bottom, the shared embedding table for ESMM, ESCM², ESM² and AITM; docs/models.md lists
them), its norm taken over the rows the tasks share (sharing.py: PLE's task-specific experts,
packed in the same tensor, are left out). A module that is not an mtlrec model (no such method)
falls back to the last shared weight matrix (not a bias) in registration order.

Under data parallelism the losses L_k (hence L_k(0)) and the per-task gradients on W are averaged
over the ranks before the norms are taken, and the network's gradients after the backward: every
rank applies the single-process update of the global batch (docs/distributed.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from mtlrec.data.spec import TaskSpec
from mtlrec.errors import MtlrecError
from mtlrec.training.balance.base import register
from mtlrec.training.balance.sharing import SharedParamsBalancer
from mtlrec.training.distributed.collectives import (
    average_gradients,
    average_over_ranks,
    average_tensors,
)


@register("gradnorm")
class GradNorm(SharedParamsBalancer):
    initial_losses: torch.Tensor

    @dataclass(frozen=True)
    class Config:
        alpha: float = 1.5  # pull towards equal training rates (0 = equal gradient norms)

        def validate(self) -> None:
            if not self.alpha >= 0:
                raise MtlrecError(f"balance.alpha must be >= 0, got {self.alpha!r}")

    def __init__(self, tasks: tuple[TaskSpec, ...], model: nn.Module, config: Config):
        self._layer = -1  # the last shared layer's index, set by check_layout (in __init__)
        named = getattr(model, "shared_trunk_last_layer", None)
        # (layer,) the model names (layer None: it shares nothing); () when the module names no
        # layer (not an mtlrec model). A tuple: the balancer must not register it as its own.
        self._trunk: tuple[nn.Parameter | None, ...] = (named(),) if callable(named) else ()
        super().__init__(tasks, model, config)
        self.alpha = float(config.alpha)
        self.task_weights = nn.Parameter(torch.ones(self.num_tasks))
        self.register_buffer("initial_losses", torch.full((self.num_tasks,), math.nan))
        self._have_initial = False

    def nothing_shared(self) -> str:
        return (
            "balance=gradnorm needs a layer shared by the tasks, and this model shares none "
            "(e.g. model=single_task); use balance=fixed, uncertainty or dwa"
        )

    def check_layout(self) -> None:
        self._layer = self.trunk_layer() if self._trunk else self.last_shared_layer()

    def trunk_layer(self) -> int:
        """Index of the layer the model names as its shared trunk's last layer."""
        assert self._params is not None
        (layer,) = self._trunk
        if layer is None:
            raise MtlrecError(self.nothing_shared())
        index = next((i for i, p in enumerate(self._params) if p is layer), None)
        if index is None or self._rows[index] is None:
            name = self._names[index] if index is not None else "a frozen parameter"
            raise MtlrecError(
                f"balance=gradnorm: the model names {name} as its shared trunk's last layer, but "
                "the tasks do not share it (or it is frozen); use balance=fixed, uncertainty or dwa"
            )
        return index

    def last_shared_layer(self) -> int:
        """Index of the last shared weight matrix (not a bias) in registration order: the rule
        for modules that are not mtlrec models (they name no trunk layer)."""
        assert self._params is not None
        matrices = [
            i
            for i, (p, name, m) in enumerate(
                zip(self._params, self._names, self._rows, strict=True)
            )
            if m is not None and p.dim() >= 2 and not name.endswith("bias")
        ]
        if not matrices:
            raise MtlrecError(self.nothing_shared())
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

    def _layer_norms(self, losses: torch.Tensor) -> torch.Tensor:
        """||grad_W L_k|| [T] over the layer's shared rows (a packed tensor's task slices
        excluded), from the per-task gradients averaged over the ranks."""
        assert self._params is not None
        layer, rows = self._params[self._layer], self._rows[self._layer]
        grads: list[torch.Tensor | None] = []
        for k in range(self.num_tasks):
            (g,) = torch.autograd.grad(losses[k], layer, retain_graph=True, allow_unused=True)
            grads.append(g if g is not None else torch.zeros_like(layer))
        return torch.stack([g[rows].norm() for g in average_tensors(grads) if g is not None])

    def backward(
        self, losses: torch.Tensor, model: nn.Module, extra: torch.Tensor | None = None
    ) -> None:
        trainable = [p for p in model.parameters() if p.requires_grad]
        if self.num_tasks == 1:  # one task: nothing to balance (e.g. model=cvr_base)
            (self.task_weights.detach() * losses).sum().add(self._track_extra(extra)).backward()
            average_gradients(trainable)
            return
        self._ensure_layout(losses, model)
        global_losses = average_over_ranks(losses.detach().clone())  # L_k of the global batch
        if not self._have_initial:
            self.initial_losses.copy_(global_losses)
            self._have_initial = True
        self.renormalize()
        grad_w, _ = self.weight_gradient(global_losses, self._layer_norms(losses))
        total = (self.task_weights.detach() * losses).sum() + self._track_extra(extra)
        total.backward()
        average_gradients(trainable)
        self.task_weights.grad = grad_w

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # noqa: ANN001
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._have_initial = bool(torch.isfinite(self.initial_losses).all())

    def current_weights(self) -> torch.Tensor:
        w = self.task_weights.detach().clamp_min(1e-6)
        return w * self.num_tasks / w.sum()
