"""Fixed task weights: L_total = sum_k w_k L_k.

w_k is the task's own weight (TaskSpec.weight, e.g. model.ctr_weight), or balance.weights.{task}
when given.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch import nn

from mtlrec.data.spec import TaskSpec
from mtlrec.errors import MtlrecError
from mtlrec.training.balance.base import Balancer, register


@register("fixed")
class Fixed(Balancer):
    @dataclass(frozen=True)
    class Config:
        weights: dict[str, float] | None = None  # {task: weight}; null keeps the tasks' weights

        def validate(self) -> None:
            for name, w in (self.weights or {}).items():
                if not (math.isfinite(w) and w >= 0):
                    raise MtlrecError(f"balance.weights.{name} must be a number >= 0, got {w!r}")

    def __init__(self, tasks: tuple[TaskSpec, ...], model: nn.Module, config: Config):
        super().__init__(tasks, model, config)
        overrides = config.weights or {}
        unknown = sorted(set(overrides) - set(self.task_names))
        if unknown:
            raise MtlrecError(
                f"balance.weights names unknown task(s) {unknown}; the trained tasks are "
                f"{self.task_names}"
            )
        for name, w in overrides.items():
            self.static_weights[self.task_names.index(name)] = float(w)
