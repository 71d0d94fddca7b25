"""ESM²: Elaborated Entire Space Supervised Multi-task Model (post-click behaviour decomposition).

Wen et al., "Entire Space Multi-Task Modeling via Post-Click Behavior Decomposition for Conversion
Rate Prediction", SIGIR 2020. Between the click and the purchase the paper puts the D-action (a
purchase-related action: add to cart or to the wish list) and groups every other post-click
behaviour as the O-action, so the funnel is impression -> click -> {D-action, O-action} -> purchase.
Four towers on one shared embedding e give the conditional probabilities:

    y1 = pCTR   = sigmoid(tower_ctr(e))                p(click | impression)
    y2 = pAVR   = sigmoid(tower_avr(e))                p(D-action | click)
    y3          = sigmoid(tower_cvr_given_action(e))   p(purchase | D-action)
    y4          = sigmoid(tower_cvr_given_other(e))    p(purchase | O-action)
    pCVR   = y2 y3 + (1 - y2) y4                       p(purchase | click): the sum over both paths
    pCTAVR = y1 y2                                      p(click and D-action | impression)
    pCTCVR = y1 pCVR = y1 (y2 y3 + (1 - y2) y4)         p(click and purchase | impression)
    loss   = ctr_weight BCE(pCTR, click) + ctavr_weight BCE(pCTAVR, action)
             + ctcvr_weight BCE(pCTCVR, purchase)

All three losses are over ALL impressions, on the products that are observable there (the
paper's CTR, CTAVR and CTCVR losses): y3 and y4 are never supervised directly, which is how the
model avoids the sample-selection bias (as ESMM does) and uses the D-actions, far more numerous than
purchases, against the sparsity of purchase labels. The action label is the funnel's
`funnel.action` column (1 only on clicked rows: click and D-action); the conversion label is
`funnel.conversion` (1 only when clicked and bought, through either path).

Every product and the path sum are computed in log space as logits (mtlrec.models.logspace), never
subtracting from 1 in probability space:

    log pCVR       = logaddexp(log s(a2) + log s(a3), log s(-a2) + log s(a4))
    log (1 - pCVR) = logaddexp(log s(a2) + log s(-a3), log s(-a2) + log s(-a4))

(a_k the tower logits, s = sigmoid), since 1 - pCVR = y2 (1 - y3) + (1 - y2)(1 - y4).

Config keys (conf/model/esm2.yaml): embedding_dim, embedding_init_std, tower_dims, activation,
dropout, batch_norm, ctr_weight, ctavr_weight, ctcvr_weight.
Outputs (logits): ctr, avr, cvr_given_action, cvr_given_other, cvr, ctavr, ctcvr; the loss tasks
are ctr, ctavr and ctcvr, and cvr is scored like ESMM's (on clicked rows and over the entire space).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from mtlrec.data.funnel import require_action
from mtlrec.data.spec import DatasetSpec, TaskSpec
from mtlrec.errors import MtlrecError
from mtlrec.models.base import MultiTaskModel, require_funnel
from mtlrec.models.layers import MLP, CommonConfig, FeatureEmbedding, check_dims, first_table
from mtlrec.models.logspace import product_logit
from mtlrec.models.registry import register

TOWERS = ("ctr", "avr", "cvr_given_action", "cvr_given_other")


@dataclass
class Esm2Config(CommonConfig):
    tower_dims: list[int] = field(default_factory=lambda: [64, 32])
    ctr_weight: float = 1.0
    ctavr_weight: float = 1.0
    ctcvr_weight: float = 1.0

    def validate(self) -> None:
        super().validate()
        check_dims("model.tower_dims", self.tower_dims)
        for key in ("ctr_weight", "ctavr_weight", "ctcvr_weight"):
            w = getattr(self, key)
            if not (math.isfinite(w) and w >= 0):
                raise MtlrecError(f"model.{key} must be a number >= 0, got {w!r}")


def path_sum_logit(
    action: torch.Tensor, buy_if_action: torch.Tensor, buy_if_other: torch.Tensor
) -> torch.Tensor:
    """logit(s(a) s(b) + (1 - s(a)) s(c)) for logits a, b, c, computed in log space."""
    act, other = F.logsigmoid(action), F.logsigmoid(-action)
    log_buy = torch.logaddexp(act + F.logsigmoid(buy_if_action), other + F.logsigmoid(buy_if_other))
    log_not = torch.logaddexp(
        act + F.logsigmoid(-buy_if_action), other + F.logsigmoid(-buy_if_other)
    )
    return log_buy - log_not


@register("esm2")
class Esm2(MultiTaskModel):
    Config = Esm2Config
    trains_dataset_tasks = False  # its loss tasks come from the funnel

    @classmethod
    def loss_tasks(
        cls, spec: DatasetSpec, selected: tuple[TaskSpec, ...], cfg: Esm2Config
    ) -> tuple[TaskSpec, ...]:
        funnel = require_funnel(spec, "esm2")
        action = require_action(spec, "esm2")
        return (
            TaskSpec("ctr", funnel.click, "binary", weight=cfg.ctr_weight),
            TaskSpec("ctavr", action, "binary", weight=cfg.ctavr_weight),
            TaskSpec("ctcvr", funnel.conversion, "binary", weight=cfg.ctcvr_weight),
        )

    def __init__(self, spec: DatasetSpec, tasks: tuple[TaskSpec, ...], cfg: Esm2Config):
        super().__init__()
        require_funnel(spec, "esm2")
        require_action(spec, "esm2")
        names = (*TOWERS, "cvr", "ctavr", "ctcvr")
        self.output_types = {name: "binary" for name in names}
        self.embedding = FeatureEmbedding(spec, cfg.embedding_dim, cfg.embedding_init_std)
        self.towers = nn.ModuleDict()
        for name in TOWERS:
            body = MLP(
                self.embedding.out_dim, cfg.tower_dims, cfg.activation, cfg.dropout, cfg.batch_norm
            )
            self.towers[name] = nn.Sequential(body, nn.Linear(body.out_dim, 1))

    def forward(self, sparse: torch.Tensor, dense: torch.Tensor) -> dict[str, torch.Tensor]:
        e = self.embedding(sparse, dense)
        out = {name: tower(e).squeeze(-1) for name, tower in self.towers.items()}
        return decompose(out)

    def shared_trunk_last_layer(self) -> nn.Parameter | None:
        """The embedding table: the four towers share the embedding only."""
        return first_table(self.embedding)


def decompose(out: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The four tower logits plus the path sum and the products (cvr, ctavr, ctcvr), as logits."""
    out["cvr"] = path_sum_logit(out["avr"], out["cvr_given_action"], out["cvr_given_other"])
    out["ctavr"] = product_logit(out["ctr"], out["avr"])
    out["ctcvr"] = product_logit(out["ctr"], out["cvr"])
    return out
