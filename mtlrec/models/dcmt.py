"""DCMT: a counterfactual twin CVR tower over the entire exposure space.

Zhu, Zhong, Yang, Li, Yu, Zhang, Zhou, Chen, Wu, Liu & Wang, "DCMT: A Direct Entire-Space Causal
Multi-Task Framework for Post-Click Conversion Estimation", ICDE 2023.

ESMM's towers (ctr, cvr; pCTCVR = pCTR x pCVR, losses on ctr and ctcvr over all impressions) plus
a second CVR tower, the counterfactual twin r*, reading what the CVR tower reads. The factual
tower r predicts conversion in the clicked space, the twin in the unclicked (counterfactual)
space, where the label is flipped: r* = 1 - r (an unclicked impression has r = 0, so its
counterfactual label is 1). Each space is weighted by the inverse propensity of being in it and
the two predictions are tied by the counterfactual constraint r + r* = 1. With o = click,
r = conversion, e = BCE, p = clip(pCTR, eps, 1 - eps) (eps = propensity_clip):

    R = 1/N sum_i [ o_i e(r_i, pCVR_i) / p_i  +  (1 - o_i) e(1 - r_i, pCVR*_i) / (1 - p_i) ]
        + constraint_weight * 1/N sum_i | 1 - (pCVR_i + pCVR*_i) |
    loss = ESMM's ctr + ctcvr losses + counterfactual_weight * R

N is every impression of the batch: the CVR towers learn over the entire exposure space. The
propensity is detached (R trains the CVR towers, never the CTR tower towards larger weights), as
for model=escm2. pCVR (output `cvr`, the factual tower) is what is served and scored; the twin's
logit is the auxiliary output `cvr_counterfactual` (never scored). R is the model's `extra_loss`
(outside task balancing; history.csv: train/extra_loss). Only the click -> conversion funnel
(chain: null) is supported.

Config keys (conf/model/dcmt.yaml): ESMM's keys plus counterfactual_weight, constraint_weight,
propensity_clip. Outputs as ESMM: ctr, cvr, ctcvr (+ the auxiliary cvr_counterfactual).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mtlrec.data.spec import DatasetSpec, TaskSpec
from mtlrec.errors import MtlrecError
from mtlrec.models.base import require_funnel
from mtlrec.models.esmm import Esmm, EsmmConfig
from mtlrec.models.layers import MLP
from mtlrec.models.registry import register


@dataclass
class DcmtConfig(EsmmConfig):
    counterfactual_weight: float = 1.0
    constraint_weight: float = 0.1
    propensity_clip: float = 0.05

    def validate(self) -> None:
        super().validate()
        if self.chain is not None:
            raise MtlrecError(
                f"model=dcmt works on the click -> conversion funnel only; model.chain must be "
                f"null, got {list(self.chain)}"
            )
        for key in ("counterfactual_weight", "constraint_weight"):
            w = getattr(self, key)
            if not (math.isfinite(w) and w >= 0):
                raise MtlrecError(f"model.{key} must be a number >= 0, got {w!r}")
        if not 0 < self.propensity_clip < 0.5:
            raise MtlrecError(
                f"model.propensity_clip must be in (0, 0.5) (pCTR is clipped to [eps, 1 - eps] "
                f"for the weights 1/p and 1/(1 - p)), got {self.propensity_clip!r}"
            )


def twin_risk(
    cvr_logit: torch.Tensor,
    twin_logit: torch.Tensor,
    propensity: torch.Tensor,
    click: torch.Tensor,
    conversion: torch.Tensor,
    constraint_weight: float,
) -> torch.Tensor:
    """DCMT's CVR risk over all rows (see the module docstring)."""
    factual = F.binary_cross_entropy_with_logits(cvr_logit, conversion, reduction="none")
    counter = F.binary_cross_entropy_with_logits(twin_logit, 1 - conversion, reduction="none")
    ips = click * factual / propensity + (1 - click) * counter / (1 - propensity)
    both = torch.sigmoid(cvr_logit) + torch.sigmoid(twin_logit)
    return ips.mean() + constraint_weight * (1 - both).abs().mean()


@register("dcmt")
class Dcmt(Esmm):
    Config = DcmtConfig

    def __init__(self, spec: DatasetSpec, tasks: tuple[TaskSpec, ...], cfg: DcmtConfig):
        super().__init__(spec, tasks, cfg)
        funnel = require_funnel(spec, "dcmt")
        self.click_index = spec.label_index(funnel.click)
        self.conversion_index = spec.label_index(funnel.conversion)
        self.weight, self.constraint_weight = cfg.counterfactual_weight, cfg.constraint_weight
        self.clip = cfg.propensity_clip
        body = MLP(
            self.tower_in_dim,
            cfg.cvr_tower_dims or cfg.tower_dims,
            cfg.activation,
            cfg.dropout,
            cfg.batch_norm,
        )
        self.twin = nn.Sequential(body, nn.Linear(body.out_dim, 1))

    def forward(self, sparse: torch.Tensor, dense: torch.Tensor) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        reps, fm = self.step_inputs(sparse, dense, out)
        self.chain_outputs(reps, fm, out)
        twin = self.twin(reps[1]).squeeze(-1)  # the CVR step's input: what the CVR tower reads
        out["cvr_counterfactual"] = twin if fm is None else twin + fm[1]
        return out

    def extra_loss(
        self, outputs: dict[str, torch.Tensor], labels: torch.Tensor
    ) -> torch.Tensor | None:
        p = torch.sigmoid(outputs["ctr"].float()).detach().clamp(self.clip, 1 - self.clip)
        risk = twin_risk(
            outputs["cvr"].float(),
            outputs["cvr_counterfactual"].float(),
            p,
            labels[:, self.click_index],
            labels[:, self.conversion_index],
            self.constraint_weight,
        )
        return self.weight * risk
