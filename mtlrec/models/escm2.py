"""ESCM²: ESMM plus a counterfactual CVR regularizer (IPS or doubly robust).

Wang et al., "ESCM²: Entire Space Counterfactual Multi-Task Model for Post-Click Conversion Rate
Estimation", SIGIR 2022. The paper shows that ESMM's pCVR is biased (its CTCVR loss does not make
pCVR an unbiased CVR estimate over the entire space) and adds a counterfactual risk on pCVR, with
the propensity of a click taken from ESMM's own CTR tower. With o = click, r = conversion,
e_i = BCE(pCVR_i, r_i) and the propensity  p_i = clip(pCTR_i, eps, 1)  (eps = propensity_clip):

    IPS:  R_IPS = 1/N sum_i o_i e_i / p_i
    DR:   R_DR  = 1/N sum_i [ ê_i + o_i (e_i - ê_i) / p_i ]          ê_i = softplus(imputation(x_i)) >= 0
          R_IMP = 1/N sum_i o_i (e_i - ê_i)^2 / p_i                   trains the imputation tower
    loss  = ESMM's ctr + ctcvr losses + counterfactual_weight * R  (+ imputation_weight * R_IMP for DR)

N is every impression of the batch. Choices (documented, as the paper leaves them open):
* the propensity is detached: the regularizer trains the CVR tower, never the CTR tower towards
  larger propensities; the clip floor eps (default 0.05) bounds every inverse weight by 1/eps;
* in R_DR the imputed error ê is a constant (detached) and in R_IMP the observed error e is, so
  R_DR trains the CVR tower and R_IMP the imputation tower, as in the paper's alternating view;
* the imputation tower reads what the CVR tower reads (the shared embedding, or the CVR step's
  backbone output) and its output `cvr_error` is auxiliary (never scored).

The regularizer is the model's `extra_loss`, added by the objective outside task balancing
(history.csv: train/extra_loss). Only the click -> conversion funnel (chain: null) is supported.

Config keys (conf/model/escm2.yaml): ESMM's keys plus regularizer (ips | dr), counterfactual_weight,
propensity_clip, imputation_tower_dims, imputation_weight. Outputs as ESMM: ctr, cvr, ctcvr.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from mtlrec.data.spec import DatasetSpec, TaskSpec
from mtlrec.errors import MtlrecError
from mtlrec.models.base import require_funnel
from mtlrec.models.esmm import Esmm, EsmmConfig
from mtlrec.models.layers import MLP, check_dims
from mtlrec.models.registry import register

REGULARIZERS = ("ips", "dr")


@dataclass
class Escm2Config(EsmmConfig):
    regularizer: str = "ips"
    counterfactual_weight: float = 0.1
    propensity_clip: float = 0.05
    imputation_tower_dims: list[int] = field(default_factory=lambda: [64, 32])
    imputation_weight: float = 1.0

    def validate(self) -> None:
        super().validate()
        if self.regularizer not in REGULARIZERS:
            raise MtlrecError(
                f"model.regularizer '{self.regularizer}' is unknown; use one of {list(REGULARIZERS)}"
            )
        if self.chain is not None:
            raise MtlrecError(
                f"model=escm2 works on the click -> conversion funnel only; model.chain must be "
                f"null, got {list(self.chain)}"
            )
        for key in ("counterfactual_weight", "imputation_weight"):
            w = getattr(self, key)
            if not (math.isfinite(w) and w >= 0):
                raise MtlrecError(f"model.{key} must be a number >= 0, got {w!r}")
        if not 0 < self.propensity_clip <= 1:
            raise MtlrecError(
                f"model.propensity_clip must be in (0, 1] (the floor of pCTR used as the click "
                f"propensity), got {self.propensity_clip!r}"
            )
        check_dims("model.imputation_tower_dims", self.imputation_tower_dims)


def counterfactual_risk(
    cvr_logit: torch.Tensor,
    propensity: torch.Tensor,
    click: torch.Tensor,
    conversion: torch.Tensor,
    imputed: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(R_IPS, None) without `imputed`, else (R_DR, R_IMP); means over all rows."""
    error = F.binary_cross_entropy_with_logits(cvr_logit, conversion, reduction="none")
    inverse = click / propensity
    if imputed is None:
        return (inverse * error).mean(), None
    e_hat = imputed.detach()
    dr = (e_hat + inverse * (error - e_hat)).mean()
    imputation = (inverse * (error.detach() - imputed) ** 2).mean()
    return dr, imputation


@register("escm2")
class Escm2(Esmm):
    Config = Escm2Config

    def __init__(self, spec: DatasetSpec, tasks: tuple[TaskSpec, ...], cfg: Escm2Config):
        super().__init__(spec, tasks, cfg)
        funnel = require_funnel(spec, "escm2")
        self.click_index = spec.label_index(funnel.click)
        self.conversion_index = spec.label_index(funnel.conversion)
        self.doubly_robust = cfg.regularizer == "dr"
        self.weight, self.imputation_weight = cfg.counterfactual_weight, cfg.imputation_weight
        self.clip = cfg.propensity_clip
        self.imputation: nn.Module | None = None
        if self.doubly_robust:
            body = MLP(
                self.tower_in_dim,
                cfg.imputation_tower_dims,
                cfg.activation,
                cfg.dropout,
                cfg.batch_norm,
            )
            self.imputation = nn.Sequential(body, nn.Linear(body.out_dim, 1))

    def forward(self, sparse: torch.Tensor, dense: torch.Tensor) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        reps, fm = self.step_inputs(sparse, dense, out)
        self.chain_outputs(reps, fm, out)
        if self.imputation is not None:  # the CVR step's input: what the CVR tower reads
            out["cvr_error"] = F.softplus(self.imputation(reps[1]).squeeze(-1))
        return out

    def extra_loss(
        self, outputs: dict[str, torch.Tensor], labels: torch.Tensor
    ) -> torch.Tensor | None:
        propensity = torch.sigmoid(outputs["ctr"].float()).detach().clamp(self.clip, 1.0)
        risk, imputation = counterfactual_risk(
            outputs["cvr"].float(),
            propensity,
            labels[:, self.click_index],
            labels[:, self.conversion_index],
            outputs["cvr_error"].float() if self.doubly_robust else None,
        )
        total = self.weight * risk
        return total if imputation is None else total + self.imputation_weight * imputation
