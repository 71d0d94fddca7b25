"""ESMM: Entire Space Multi-task Model.

Ma et al., "Entire Space Multi-Task Model: An Effective Approach for Estimating Post-Click
Conversion Rate", SIGIR 2018.

    e      = Embedding(sparse) ++ dense                 shared by both towers
    pCTR   = sigmoid(tower_ctr(e))                      p(click | impression)
    pCVR   = sigmoid(tower_cvr(e))                      p(conversion | click, impression)
    pCTCVR = pCTR * pCVR                                p(click and conversion | impression)
    loss   = ctr_weight * BCE(pCTR, click) + ctcvr_weight * BCE(pCTCVR, click AND conversion)

Both losses are over ALL impressions; there is no loss on pCVR itself, which is how ESMM avoids the
sample-selection bias of training CVR on clicked rows only. pCTCVR is returned as a logit computed
in log space (log pCTCVR = log pCTR + log pCVR), so its loss never takes the log of a product that
underflowed to 0.

Config keys (conf/model/esmm.yaml): embedding_dim, embedding_init_std, tower_dims, ctr_tower_dims,
cvr_tower_dims, activation, dropout, batch_norm, ctr_weight, ctcvr_weight.
Outputs: ctr, cvr, ctcvr (logits).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from mtlrec.data.spec import DatasetSpec, TaskSpec
from mtlrec.models.base import MultiTaskModel, require_funnel
from mtlrec.models.layers import MLP, CommonConfig, FeatureEmbedding, check_dims


@dataclass
class EsmmConfig(CommonConfig):
    tower_dims: list[int] = field(default_factory=lambda: [64, 32])
    ctr_tower_dims: list[int] | None = None
    cvr_tower_dims: list[int] | None = None
    ctr_weight: float = 1.0
    ctcvr_weight: float = 1.0

    def validate(self) -> None:
        super().validate()
        check_dims("model.tower_dims", self.tower_dims)
        check_dims("model.ctr_tower_dims", self.ctr_tower_dims or self.tower_dims)
        check_dims("model.cvr_tower_dims", self.cvr_tower_dims or self.tower_dims)


def product_logit(logit_a: torch.Tensor, logit_b: torch.Tensor) -> torch.Tensor:
    """logit(sigmoid(a) * sigmoid(b)), computed in log space without underflow."""
    log_p = (F.logsigmoid(logit_a) + F.logsigmoid(logit_b)).clamp(max=-1e-12)
    # log(1 - p) from log p: two formulas, each accurate on its side of p = 1/2.
    log_1mp = torch.where(
        log_p > -0.6931471805599453, torch.log(-torch.expm1(log_p)), torch.log1p(-torch.exp(log_p))
    )
    return log_p - log_1mp


class Esmm(MultiTaskModel):
    Config = EsmmConfig

    @classmethod
    def loss_tasks(
        cls, spec: DatasetSpec, selected: tuple[TaskSpec, ...], cfg: EsmmConfig
    ) -> tuple[TaskSpec, ...]:
        funnel = require_funnel(spec, "esmm")
        return (
            TaskSpec("ctr", funnel.click, "binary", weight=cfg.ctr_weight),
            TaskSpec("ctcvr", funnel.conversion, "binary", weight=cfg.ctcvr_weight),
        )

    def __init__(self, spec: DatasetSpec, tasks: tuple[TaskSpec, ...], cfg: EsmmConfig):
        super().__init__()
        self.output_types = {"ctr": "binary", "cvr": "binary", "ctcvr": "binary"}
        self.embedding = FeatureEmbedding(spec, cfg.embedding_dim, cfg.embedding_init_std)
        in_dim = self.embedding.out_dim
        towers = {
            "ctr": cfg.ctr_tower_dims or cfg.tower_dims,
            "cvr": cfg.cvr_tower_dims or cfg.tower_dims,
        }
        self.towers = nn.ModuleDict()
        for name, dims in towers.items():
            body = MLP(in_dim, dims, cfg.activation, cfg.dropout, cfg.batch_norm)
            self.towers[name] = nn.Sequential(body, nn.Linear(body.out_dim, 1))

    def forward(self, sparse: torch.Tensor, dense: torch.Tensor) -> dict[str, torch.Tensor]:
        e = self.embedding(sparse, dense)
        ctr = self.towers["ctr"](e).squeeze(-1)
        cvr = self.towers["cvr"](e).squeeze(-1)
        return {"ctr": ctr, "cvr": cvr, "ctcvr": product_logit(ctr, cvr)}
