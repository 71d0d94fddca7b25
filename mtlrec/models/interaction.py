"""Feature-interaction backbones below the towers/experts: DeepFM's FM term and DCN-v2 cross layers.

`model.backbone` of esmm, shared_bottom, mmoe and single_task picks one (`mlp` = none, the default):

* `deepfm` (Guo et al., "DeepFM: A Factorization-Machine based Neural Network for CTR
  Prediction", IJCAI 2017). The FM and the deep part share the field embeddings v_1..v_F:

      FM(v)  = sum_{i<j} <v_i, v_j> = 1/2 sum_d [ (sum_i v_id)^2 - sum_i v_id^2 ]
      y_k    = DNN_k(x) + a_k FM(v)           a_k: each task's learned scale of the term (init 1)

  The networks read the embedding unchanged (x); every task's logit adds the FM term, scaled per
  task so a task that does not profit from it can turn it down. Only sparse fields enter the FM
  (they must share one embedding size); dense features reach the DNN only.
* `dcn` (Wang et al., "DCN V2: Improved Deep & Cross Network and Practical Lessons for Web-scale
  Learning to Rank Systems", WWW 2021), stacked form: `cross_layers` full-rank cross layers

      x_{l+1} = x_0 * (W_l x_l + b_l) + x_l       (* elementwise)

  then the model's own networks (towers, bottom, experts) read x_L: they are DCN-v2's deep part.

Inputs are [B, in] (one shared embedding) or [G, B, in] (G private embeddings: single_task,
ESMM without a shared embedding); a grouped input gets grouped, unshared cross layers.
"""

from __future__ import annotations

import torch
from torch import nn

from mtlrec.data.spec import DatasetSpec
from mtlrec.errors import MtlrecError
from mtlrec.models.layers import GroupedLinear, check_positive

BACKBONES = ("mlp", "deepfm", "dcn")


def check_backbone(value: str, cross_layers: int, allowed: tuple[str, ...] = BACKBONES) -> None:
    if value not in allowed:
        raise MtlrecError(f"model.backbone '{value}' is unknown; use one of {list(allowed)}")
    if value == "dcn":
        check_positive("model.cross_layers", cross_layers)


def factorization_machine(fields: torch.Tensor) -> torch.Tensor:
    """FM second-order term of field embeddings [..., F, d] -> [...]: sum over pairs of <v_i, v_j>."""
    total = fields.sum(-2)
    return 0.5 * (total * total - (fields * fields).sum(-2)).sum(-1)


class CrossLayer(nn.Module):
    """One DCN-v2 cross layer on [G, B, d]: x0 * (W x + b) + x, one (W, b) per group."""

    def __init__(self, groups: int, dim: int):
        super().__init__()
        self.linear = GroupedLinear(groups, dim, dim)

    def forward(self, x0: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return x0 * self.linear(x) + x


class FeatureInteraction(nn.Module):
    """forward(x) -> (x for the networks, FM logit term per task [T, B] or None).

    `groups` = 1 for a shared input [B, in]; G for private inputs [G, B, in] (then T = G).
    """

    def __init__(
        self,
        kind: str,
        spec: DatasetSpec,
        embedding_dim: int,
        in_dim: int,
        num_tasks: int,
        cross_layers: int = 2,
        groups: int = 1,
    ):
        super().__init__()
        self.kind, self.groups = kind, groups
        self.cross = nn.ModuleList()
        if kind == "dcn":
            self.cross.extend(CrossLayer(groups, in_dim) for _ in range(cross_layers))
        self.fm_fields = 0
        if kind == "deepfm":
            embedded = [f for f in spec.features if f.kind != "dense"]  # ids, bags, sequences
            sizes = sorted({f.embedding_dim or embedding_dim for f in embedded})
            if len(sizes) != 1:
                raise MtlrecError(
                    f"model.backbone=deepfm needs every sparse field of dataset '{spec.name}' to "
                    f"have one embedding size (the FM takes dot products); it has sizes {sizes}"
                )
            # one vector per field (or per feature group) ahead of the dense features
            self.fm_fields = (in_dim - len(spec.dense)) // sizes[0]
            self.fm_dim = sizes[0]
            self.fm_scale = nn.Parameter(torch.ones(num_tasks, 1))
        self.out_dim = in_dim

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.kind == "dcn":
            grouped = x.unsqueeze(0) if x.dim() == 2 else x
            h = grouped
            for layer in self.cross:
                h = layer(grouped, h)
            return (h[0] if x.dim() == 2 else h), None
        if self.kind == "deepfm":
            width = self.fm_fields * self.fm_dim
            fields = x[..., :width].unflatten(-1, (self.fm_fields, self.fm_dim))
            fm = factorization_machine(fields)  # [B] or [G, B]
            return x, self.fm_scale * (fm.unsqueeze(0) if fm.dim() == 1 else fm)
        return x, None
