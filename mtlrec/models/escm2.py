"""ESCM²: ESMM plus a counterfactual CVR regularizer (IPS or doubly robust).

Wang et al., "ESCM²: Entire Space Counterfactual Multi-Task Model for Post-Click Conversion Rate
Estimation", SIGIR 2022; reference code: the authors' PaddleRec models/multitask/escm2. ESMM's pCVR
is biased over the entire space; ESCM² adds a counterfactual risk on pCVR with the propensity of a
click taken from ESMM's own CTR tower. With o = click, r = conversion, e_i = BCE(pCVR_i, r_i) and
p_i = clip(pCTR_i, eps, 1) (eps = propensity_clip), means over every impression of the batch:

    IPS:  R_IPS = 1/N sum_i o_i e_i / p_i
    DR:   R_DR  = 1/N sum_i [ ê_i + o_i (e_i - ê_i) / p_i ]
          R_IMP = 1/N sum_i o_i (e_i - ê_i)^2 / p_i
    loss  = ctr_weight L_ctr + ctcvr_weight L_ctcvr + counterfactual_weight (R + imputation_weight R_IMP)

The imputed error ê (`imputation`):
* `error` (default, the reference code): ê_i = the imputation tower's output, a probability
  sigmoid(t_i) (`imputed_error: probability`, as the reference) or softplus(t_i) >= 0
  (`imputed_error: softplus`: unbounded, like a BCE, which can exceed 1). Nothing is detached, as
  in the reference: R_IMP trains the CVR tower too (through e), so DR's CVR-tower gradient is
  IPS's plus 2 o (e - ê) / p de, and R_DR trains the imputation tower (through ê).
* `label` (DR-JL, Wang, Zhang, Sun & Qi, ICML 2019): the tower imputes a conversion label
  y~_i = sigmoid(t_i) and ê_i = BCE(pCVR_i, y~_i) depends on the CVR tower. Joint learning's two
  steps: in R_DR y~ is a constant (R_DR trains the CVR tower, on unclicked rows too through ê), in
  R_IMP pCVR is (R_IMP trains the imputation tower).

The propensity is detached in both (the reference's IPS detaches it, its DR does not): the
regularizer never trains the CTR tower, which only ESMM's losses do. The floor eps = 0.05 bounds
every inverse weight by 20 (the reference floors pCTR at 1e-6 in DR and clips inverse weights at
15 in IPS; `model.propensity_clip=0.000001` is its DR floor). Defaults counterfactual_weight 0.5
and ctcvr_weight 0.5 are the reference's (counterfactual_w, global_w); imputation_weight 1.0 puts
R_IMP under the same weight as R_DR, as the reference does.

The imputation tower reads what the CVR tower reads (the shared embedding, or the CVR step's
backbone output); its output `cvr_imputed` (ê, or y~ for `label`) is auxiliary (never scored).
The regularizer is the model's `extra_loss`, added by the objective outside task balancing
(history.csv: train/extra_loss). Only the click -> conversion funnel (chain: null) is supported.

Config keys (conf/model/escm2.yaml): ESMM's keys plus regularizer (ips | dr), imputation
(error | label), imputed_error (probability | softplus), counterfactual_weight, propensity_clip,
imputation_tower_dims, imputation_weight. Outputs as ESMM: ctr, cvr, ctcvr.
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
IMPUTATIONS = ("error", "label")
IMPUTED_ERRORS = ("probability", "softplus")


@dataclass
class Escm2Config(EsmmConfig):
    ctcvr_weight: float = 0.5  # the reference's global_w
    regularizer: str = "ips"
    imputation: str = "error"
    imputed_error: str = "probability"
    counterfactual_weight: float = 0.5  # the reference's counterfactual_w
    propensity_clip: float = 0.05
    imputation_tower_dims: list[int] = field(default_factory=lambda: [64, 32])
    imputation_weight: float = 1.0

    def validate(self) -> None:
        super().validate()
        for key, allowed in (
            ("regularizer", REGULARIZERS),
            ("imputation", IMPUTATIONS),
            ("imputed_error", IMPUTED_ERRORS),
        ):
            if getattr(self, key) not in allowed:
                raise MtlrecError(
                    f"model.{key} '{getattr(self, key)}' is unknown; use one of {list(allowed)}"
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
    imputation: str = "error",
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(R_IPS, None) without `imputed`, else (R_DR, R_IMP); means over all rows.

    `imputed`: ê itself (imputation "error"), or the imputed label y~ in [0, 1] ("label", then
    ê = BCE(pCVR, y~)). Gradients as in the module docstring (the propensity is used as given).
    """
    error = F.binary_cross_entropy_with_logits(cvr_logit, conversion, reduction="none")
    inverse = click / propensity
    if imputed is None:
        return (inverse * error).mean(), None
    if imputation == "error":  # the reference: nothing detached
        e_hat, e_hat_imp, e_imp = imputed, imputed, error
    else:  # DR-JL: y~ fixed in the prediction step, pCVR fixed in the imputation step
        bce = F.binary_cross_entropy_with_logits
        e_hat = bce(cvr_logit, imputed.detach(), reduction="none")
        e_hat_imp = bce(cvr_logit.detach(), imputed, reduction="none")
        e_imp = error.detach()
    dr = (e_hat + inverse * (error - e_hat)).mean()
    return dr, (inverse * (e_imp - e_hat_imp) ** 2).mean()


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
        self.imputation_mode = cfg.imputation
        # ê's squashing (imputation=error) or the imputed label's (label: always a probability)
        self.softplus = cfg.imputation == "error" and cfg.imputed_error == "softplus"
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
            raw = self.imputation(reps[1]).squeeze(-1)
            out["cvr_imputed"] = F.softplus(raw) if self.softplus else torch.sigmoid(raw)
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
            outputs["cvr_imputed"].float() if self.doubly_robust else None,
            self.imputation_mode,
        )
        if imputation is not None:
            risk = risk + self.imputation_weight * imputation
        return self.weight * risk
