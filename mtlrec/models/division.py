"""DIVISION: the ESMM paper's ablation that divides two separately trained predictions.

Ma et al., "Entire Space Multi-Task Model", SIGIR 2018, Sec. 4.2 ("DIVISION"): a CTR network and a
CTCVR network, sharing nothing, each trained on ALL impressions; the CVR estimate is their quotient

    pCTR   = sigmoid(net_ctr(Embedding_ctr(sparse) ++ dense))      loss BCE(pCTR, click)
    pCTCVR = sigmoid(net_ctcvr(Embedding_ctcvr(sparse) ++ dense))  loss BCE(pCTCVR, click AND conversion)
    pCVR   = min(pCTCVR / pCTR, 1)                                 never trained on

Nothing ties the two networks, so pCTCVR can exceed pCTR: those rows are clamped to pCVR = 1 and
counted, in the auxiliary output `cvr_clamped` (1.0 for a clamped row, else 0.0): its mean over a
split is the fraction of rows where the two networks disagree with probability theory. The
quotient is taken in log space (log pCVR = log pCTCVR - log pCTR, from log-sigmoids) so that tiny
probabilities do not underflow; a clamped row's logit is 17.33 (pCVR = 1 - 2^-25, i.e. 1.0 in
float32), finite, so exports and metrics never meet an inf.

The two networks run side by side as one grouped computation (like single_task): the embedding
table stores one embedding per network, the MLPs are grouped.

Config keys (conf/model/division.yaml): embedding_dim, embedding_init_std, tower_dims, ctr_weight,
ctcvr_weight, activation, dropout, batch_norm. Outputs: ctr, ctcvr, cvr (logits), cvr_clamped (aux).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from mtlrec.data.spec import DatasetSpec, TaskSpec
from mtlrec.models.base import MultiTaskModel, require_funnel
from mtlrec.models.layers import CommonConfig, FeatureEmbedding, GroupedMLP, check_dims
from mtlrec.models.logspace import log1mexp
from mtlrec.models.registry import register

# log(1 - 2^-25): the largest log-probability below 1 whose float32 sigmoid-logit rounds to 1.0
LOG_ALMOST_ONE = math.log1p(-(2.0**-25))


@dataclass
class DivisionConfig(CommonConfig):
    tower_dims: list[int] = field(default_factory=lambda: [64, 32])
    ctr_weight: float = 1.0
    ctcvr_weight: float = 1.0

    def validate(self) -> None:
        super().validate()
        check_dims("model.tower_dims", self.tower_dims)


def divide(ctr_logit: torch.Tensor, ctcvr_logit: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(logit of min(pCTCVR / pCTR, 1), 1.0 where the quotient was above 1 and clamped)."""
    log_q = F.logsigmoid(ctcvr_logit) - F.logsigmoid(ctr_logit)
    clamped = log_q > 0
    log_q = log_q.clamp(max=LOG_ALMOST_ONE)
    return log_q - log1mexp(log_q), clamped.to(ctr_logit.dtype)


@register("division")
class Division(MultiTaskModel):
    Config = DivisionConfig
    trains_dataset_tasks = False  # its loss tasks come from the funnel

    @classmethod
    def loss_tasks(
        cls, spec: DatasetSpec, selected: tuple[TaskSpec, ...], cfg: DivisionConfig
    ) -> tuple[TaskSpec, ...]:
        f = require_funnel(spec, "division")
        return (
            TaskSpec("ctr", f.click, "binary", weight=cfg.ctr_weight),
            TaskSpec("ctcvr", f.conversion, "binary", weight=cfg.ctcvr_weight),
        )

    def __init__(self, spec: DatasetSpec, tasks: tuple[TaskSpec, ...], cfg: DivisionConfig):
        super().__init__()
        self.output_types = {"ctr": "binary", "ctcvr": "binary", "cvr": "binary"}
        self.embedding = FeatureEmbedding(spec, cfg.embedding_dim, cfg.embedding_init_std, copies=2)
        self.nets = GroupedMLP(
            2,
            self.embedding.out_dim,
            cfg.tower_dims,
            cfg.activation,
            cfg.dropout,
            cfg.batch_norm,
            out_dim=1,
        )

    def forward(self, sparse: torch.Tensor, dense: torch.Tensor) -> dict[str, torch.Tensor]:
        y = self.nets(self.embedding(sparse, dense)).squeeze(-1)  # [2, B]: ctr, ctcvr
        cvr, clamped = divide(y[0], y[1])
        return {"ctr": y[0], "ctcvr": y[1], "cvr": cvr, "cvr_clamped": clamped}

    def shared_trunk_last_layer(self) -> nn.Parameter | None:
        """None: the CTR and CTCVR networks share nothing (the ablation's point)."""
        return None
