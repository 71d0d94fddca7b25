"""MetaBalance: He, Feng, Cheng, Chen, Chen, Cheng & Cheng, "MetaBalance: Improving Multi-Task
Recommendations via Adapting Gradient Magnitudes of Auxiliary Tasks", WWW 2022.

One task is the target (`balance.target`, default the first task), the others are auxiliary. For
every shared parameter tensor p (its shared rows; geometry.py) and task k, a moving average of
the gradient norm (zero-initialised, as in the authors' and torch-rechub's code)

    m_k(p) <- beta m_k(p) + (1 - beta) ||g_k(p)||

rescales each auxiliary gradient towards the target's magnitude, relaxed by r (relax factor):

    g_k(p) <- r (m_target(p) / m_k(p)) g_k(p) + (1 - r) g_k(p),     update = sum_k g_k(p)

(the target's gradient is left as it is; r = 0 is the plain sum, r = 1 equal magnitudes). g_k is
the gradient of w_k L_k. Task-specific parameters get the plain sum of their gradients. Exact
under data parallelism: the task gradients are averaged over the ranks before their norms are
taken. The epoch mean of each task's scale (averaged over the shared tensors) is logged as
`metabalance/scale/{task}`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from mtlrec.data.spec import TaskSpec
from mtlrec.errors import MtlrecError
from mtlrec.training.balance.base import register
from mtlrec.training.balance.geometry import GradientCombiner, Segment


@register("metabalance")
class MetaBalance(GradientCombiner):
    norms: torch.Tensor
    scale_sum: torch.Tensor
    scale_steps: torch.Tensor

    @dataclass(frozen=True)
    class Config:
        relax_factor: float = 0.7  # r: 0 = plain sum, 1 = every task at the target's magnitude
        beta: float = 0.9  # moving-average coefficient of the gradient norms
        target: str | None = None  # the target task (null = the first task)

        def validate(self) -> None:
            if not 0 <= self.relax_factor <= 1:
                raise MtlrecError(
                    f"balance.relax_factor must be in [0, 1], got {self.relax_factor!r}"
                )
            if not 0 <= self.beta < 1:
                raise MtlrecError(f"balance.beta must be in [0, 1), got {self.beta!r}")

    def __init__(self, tasks: tuple[TaskSpec, ...], model: nn.Module, config: Config):
        names = [t.name for t in tasks]
        if config.target is not None and config.target not in names:
            raise MtlrecError(
                f"balance.target '{config.target}' is not a task of this model; tasks: {names}"
            )
        super().__init__(tasks, model, config)
        self.target = names.index(config.target) if config.target is not None else 0
        self.relax, self.beta = float(config.relax_factor), float(config.beta)
        # [shared tensors, T]; sized at the first step (the layout of an unprobed module)
        self.register_buffer("norms", torch.zeros(0, self.num_tasks))
        self.register_buffer("scale_sum", torch.zeros(self.num_tasks))
        self.register_buffer("scale_steps", torch.zeros((), dtype=torch.long))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # noqa: ANN001
        saved = state_dict.get(prefix + "norms")
        if saved is not None:  # the moving averages of a run past its first step
            self.norms = torch.zeros_like(saved, device=self.norms.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def scales(self, norms: torch.Tensor) -> torch.Tensor:
        """[tensors, T] factors from the moving averages m [tensors, T]."""
        ratio = norms[:, self.target : self.target + 1] / norms.clamp_min(1e-12)
        ratio = torch.where(norms > 0, ratio, torch.ones_like(ratio))
        out = self.relax * ratio + (1 - self.relax)
        out[:, self.target] = 1.0
        return out

    def combine(self, grads: torch.Tensor, segments: list[Segment]) -> torch.Tensor:
        pieces = [grads[:, s.start : s.stop] for s in segments]
        current = torch.stack([p.norm(dim=1) for p in pieces])  # [tensors, T]
        if self.norms.shape != current.shape:
            self.norms = torch.zeros_like(current)
        self.norms.mul_(self.beta).add_((1 - self.beta) * current)
        factors = self.scales(self.norms)
        self.scale_sum += factors.mean(0)
        self.scale_steps += 1
        return torch.cat([f @ p for f, p in zip(factors, pieces, strict=True)])

    def end_epoch(self) -> dict[str, float]:
        row = super().end_epoch()
        if int(self.scale_steps):
            mean = (self.scale_sum / self.scale_steps).tolist()
            for name, s in zip(self.task_names, mean, strict=True):
                row[f"metabalance/scale/{name}"] = float(s)
        self.scale_sum.zero_()
        self.scale_steps.zero_()
        return row
