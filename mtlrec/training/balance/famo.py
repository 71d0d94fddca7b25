"""FAMO: Liu, Liang, Stone & Liu, "FAMO: Fast Adaptive Multitask Optimization", NeurIPS 2023.

Task logits xi [T] (zero at the start), z = softmax(xi). Each step minimises the weighted
log-losses, whose gradient is the loss gradients weighted so that every task's log-loss falls at
a comparable rate:

    objective = sum_k (z_k / c) log(L_k + eps),  c = sum_k z_k / (L_k + eps)   (c held constant)
    => grad = sum_k (z_k / (c (L_k + eps))) grad L_k        (weights summing to 1)

and xi follows the rates at which the log-losses fell: with delta_k = log(L_k(prev) + eps) -
log(L_k(now) + eps), xi's gradient is J_softmax(xi)^T delta, applied by its own Adam (learning
rate `lr`, weight decay `weight_decay`, the authors' gamma). The authors re-evaluate the losses on
the same batch after the model's step to get L(now); a balancer sees each batch once, so L(now)
here is the next batch's loss before its step (one step late, no extra forward pass). eps = 1e-8,
the losses' lower bounds are 0 (the authors' defaults). A task's own weight w_k does not change
the method (log(w_k L_k) differs from log L_k by a constant). `weight/{task}` is z.

Under data parallelism L is the global batch's loss (averaged over the ranks) in both formulas,
so xi and the weights are the same on every rank and DDP's averaged gradient is the
single-process one. xi, L(prev) and the Adam state are saved in checkpoints.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from mtlrec.data.spec import TaskSpec
from mtlrec.errors import MtlrecError
from mtlrec.training.balance.base import Balancer, register
from mtlrec.training.distributed.collectives import average_over_ranks

EPS = 1e-8


@register("famo")
class FAMO(Balancer):
    logits: torch.Tensor
    previous: torch.Tensor

    @dataclass(frozen=True)
    class Config:
        lr: float = 0.025  # learning rate of the task logits (their own Adam)
        weight_decay: float = 0.01  # gamma: weight decay of the task logits

        def validate(self) -> None:
            if not self.lr > 0:
                raise MtlrecError(f"balance.lr must be > 0, got {self.lr!r}")
            if not self.weight_decay >= 0:
                raise MtlrecError(f"balance.weight_decay must be >= 0, got {self.weight_decay!r}")

    def __init__(self, tasks: tuple[TaskSpec, ...], model: nn.Module, config: Config):
        super().__init__(tasks, model, config)
        self.lr, self.weight_decay = float(config.lr), float(config.weight_decay)
        # buffers, not parameters: the run's optimizer must not step them, their own Adam does
        self.register_buffer("logits", torch.zeros(self.num_tasks))
        self.register_buffer("previous", torch.full((self.num_tasks,), math.nan))
        self._adam: torch.optim.Adam | None = None  # built at the first step, on the device
        self._adam_state: dict[str, Any] | None = None  # a checkpoint's, until then

    def get_extra_state(self) -> dict:
        # a copy: Adam's state_dict holds its live tensors, which the next step changes in place
        state = self._adam.state_dict() if self._adam is not None else self._adam_state
        return {"adam": copy.deepcopy(state)}

    def set_extra_state(self, state: dict) -> None:
        self._adam_state = state["adam"]
        if self._adam is not None and self._adam_state is not None:
            self._adam.load_state_dict(self._adam_state)

    def _optimizer(self) -> torch.optim.Adam:
        if self._adam is None:
            self._adam = torch.optim.Adam([self.logits], lr=self.lr, weight_decay=self.weight_decay)
            if self._adam_state is not None:
                self._adam.load_state_dict(self._adam_state)
        return self._adam

    def logits_gradient(self, previous: torch.Tensor, now: torch.Tensor) -> torch.Tensor:
        """J_softmax(xi)^T delta, delta_k = log(L_k(prev) + eps) - log(L_k(now) + eps)."""
        delta = torch.log(previous + EPS) - torch.log(now + EPS)
        z = torch.softmax(self.logits, 0)
        return z * (delta - (z * delta).sum())

    def loss_weights(self, losses: torch.Tensor) -> torch.Tensor:
        """z_k / (c (L_k + eps)), c = sum_j z_j / (L_j + eps)."""
        z = torch.softmax(self.logits, 0)
        inverse = z / (losses + EPS)
        return inverse / inverse.sum()

    @torch.no_grad()
    def update_logits(self, losses: torch.Tensor) -> None:
        """One Adam step on xi from the fall of the log-losses since the last step."""
        if bool(torch.isfinite(self.previous).all()):
            optimizer = self._optimizer()
            self.logits.grad = self.logits_gradient(self.previous, losses)
            optimizer.step()
            self.logits.grad = None
        self.previous.copy_(losses)

    def backward(
        self, losses: torch.Tensor, model: nn.Module, extra: torch.Tensor | None = None
    ) -> None:
        global_losses = average_over_ranks(losses.detach().clone()).clamp_min(0)
        self.update_logits(global_losses)
        weights = self.loss_weights(global_losses)
        ((weights * losses).sum() + self._track_extra(extra)).backward()

    def current_weights(self) -> torch.Tensor:
        return torch.softmax(self.logits, 0)
