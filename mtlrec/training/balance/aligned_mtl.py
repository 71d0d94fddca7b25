"""Aligned-MTL: Senushkin, Patakin, Kuznetsov & Konushin, "Independent Component Alignment for
Multi-Task Learning", CVPR 2023.

On the shared rows of the shared parameters (geometry.py), with G [T, S] the task gradients (of
w_k L_k) and the eigendecomposition G G^T = V diag(lambda) V^T (eigenvalues below
lambda_max * T * eps(float32) dropped, as the authors do), the gradients are aligned by

    B = sigma V diag(lambda^(-1/2)) V^T,   G_hat = B G,

so that G_hat G_hat^T = sigma^2 I on the span of the gradients: orthogonal task gradients of one
common norm (condition number 1, nothing dominates, nothing conflicts). sigma^2 is the smallest
kept eigenvalue (`scale=min`, the authors' default), their median (`median`) or mean (`rmse`).
The update is the sum of the aligned gradients, d = 1^T G_hat = (B 1)^T G. Task-specific
parameters get the plain sum of their gradients. Exact under data parallelism: the task
gradients are averaged over the ranks before they are aligned.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from mtlrec.data.spec import TaskSpec
from mtlrec.training.balance.base import register
from mtlrec.training.balance.geometry import CoefficientCombiner


def alignment_matrix(gram: torch.Tensor, scale: str = "min") -> torch.Tensor:
    """B [T, T] with (B G)(B G)^T = sigma^2 I on the span of G, from gram = G G^T (float64)."""
    eigenvalues, vectors = torch.linalg.eigh(gram)
    t = gram.shape[0]
    cutoff = float(eigenvalues.max()) * t * torch.finfo(torch.float32).eps
    keep = eigenvalues > cutoff
    if float(eigenvalues.max()) <= 0 or not bool(keep.any()):  # all gradients zero
        return torch.zeros_like(gram)
    lam, v = eigenvalues[keep], vectors[:, keep]
    if scale == "min":
        sigma2 = lam.min()
    elif scale == "median":
        sigma2 = lam.median()  # the lower median for an even count, as torch.median
    else:
        sigma2 = lam.mean()
    return (v * (sigma2 / lam).sqrt()) @ v.T


@register("aligned_mtl")
class AlignedMTL(CoefficientCombiner):
    @dataclass(frozen=True)
    class Config:
        # sigma^2: the smallest kept eigenvalue (min), their median, or their mean (rmse)
        scale: Literal["min", "median", "rmse"] = "min"

    def __init__(self, tasks: tuple[TaskSpec, ...], model: nn.Module, config: Config):
        super().__init__(tasks, model, config)
        self.scale = config.scale

    def coefficients(self, gram: torch.Tensor) -> torch.Tensor:
        return alignment_matrix(gram, self.scale).sum(0)
