"""BASE of the ESMM paper: a CVR model trained on clicked impressions only.

Ma et al., SIGIR 2018, Sec. 4 ("BASE"): the conventional way to train post-click conversion rate,

    pCVR = sigmoid(net(Embedding(sparse) ++ dense)),   loss = BCE(pCVR, conversion) over rows with click = 1

It learns from the clicked rows only, yet is used to score every impression: the sample-selection
bias that ESMM removes. Compare `test/cvr_auc_entire` (all impressions, counterfactual labels) of
this model and of esmm.

Config keys (conf/model/cvr_base.yaml): embedding_dim, embedding_init_std, tower_dims, activation,
dropout, batch_norm. Output: cvr (logit).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from mtlrec.data.spec import DatasetSpec, TaskSpec
from mtlrec.models.base import MultiTaskModel, require_funnel
from mtlrec.models.layers import MLP, CommonConfig, FeatureEmbedding, check_dims
from mtlrec.models.registry import register


@dataclass
class CvrBaseConfig(CommonConfig):
    tower_dims: list[int] = field(default_factory=lambda: [64, 32])

    def validate(self) -> None:
        super().validate()
        check_dims("model.tower_dims", self.tower_dims)


@register("cvr_base")
class CvrBase(MultiTaskModel):
    Config = CvrBaseConfig
    trains_dataset_tasks = False  # its loss tasks come from the funnel

    @classmethod
    def loss_tasks(
        cls, spec: DatasetSpec, selected: tuple[TaskSpec, ...], cfg: CvrBaseConfig
    ) -> tuple[TaskSpec, ...]:
        funnel = require_funnel(spec, "cvr_base")
        return (TaskSpec("cvr", funnel.conversion, "binary", where=funnel.click),)

    def __init__(self, spec: DatasetSpec, tasks: tuple[TaskSpec, ...], cfg: CvrBaseConfig):
        super().__init__()
        self.output_types = {"cvr": "binary"}
        self.embedding = FeatureEmbedding(spec, cfg.embedding_dim, cfg.embedding_init_std)
        body = MLP(
            self.embedding.out_dim, cfg.tower_dims, cfg.activation, cfg.dropout, cfg.batch_norm
        )
        self.net = nn.Sequential(body, nn.Linear(body.out_dim, 1))

    def forward(self, sparse: torch.Tensor, dense: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"cvr": self.net(self.embedding(sparse, dense)).squeeze(-1)}

    def shared_trunk_last_layer(self) -> nn.Parameter | None:
        """None: one task, nothing to share."""
        return None
