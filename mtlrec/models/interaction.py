"""Feature-interaction backbones below the towers/experts: DeepFM's FM term and DCN-v2 cross layers.

`model.backbone` of esmm, shared_bottom, mmoe and single_task picks one (`mlp` = none, the default):

* `deepfm` (Guo et al., "DeepFM: A Factorization-Machine based Neural Network for CTR
  Prediction", IJCAI 2017). The FM and the deep part share the field embeddings v_1..v_F:

      FM(x)  = <w, x> + sum_{i<j} <v_i, v_j>
             = sum_f w_f[id_f] + sum_d u_d x_d + 1/2 sum_k [ (sum_i v_ik)^2 - sum_i v_ik^2 ]
      y_k    = DNN_k(x) + FM(x)                  (the paper: no scale on the FM term)

  The first-order term <w, x> has one learned scalar per id of every single-id field (w_f[id],
  a table of its own, init 0) and one per dense feature (u_d); the second-order term takes every
  embedded field's vector (single ids, bags and sequences pooled, or a feature group's sum).
  `fm_task_scale: true` (an mtlrec option, not the paper) multiplies the FM term by a learned
  scale per task, y_k = DNN_k(x) + a_k FM(x) (init 1), so a task that does not profit from it can
  turn it down. The networks read the embedding unchanged (x). Only sparse fields enter the
  second-order term (they must share one embedding size); multi-value fields enter it only.
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


class FirstOrder(nn.Module):
    """<w, x> of DeepFM: a scalar per id of each single-id field plus a weight per dense feature,
    G sets of them (one per private input) -> [G, B]."""

    def __init__(self, spec: DatasetSpec, groups: int):
        super().__init__()
        self.num_single = len(spec.sparse)
        vocab = sum(f.vocab_size for f in spec.vocab_owners)
        # [G, ids]: group first, like every per-task parameter; init 0, so the term starts at 0
        self.weight = nn.Parameter(torch.zeros(groups, max(vocab, 1)))
        self.dense = nn.Linear(len(spec.dense), groups, bias=False)
        nn.init.zeros_(self.dense.weight)
        self.num_dense = len(spec.dense)

    def forward(self, sparse: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        ids = sparse[:, : self.num_single]  # single-id columns hold ids of the fused id space
        first = self.weight[:, ids].sum(-1)  # [G, B]
        if self.num_dense:
            first = first + self.dense(dense[:, : self.num_dense].to(first.dtype)).transpose(0, 1)
        return first


class FeatureInteraction(nn.Module):
    """forward(x, sparse, dense) -> (x for the networks, FM logit term per task [T, B] or None).

    `groups` = 1 for a shared input [B, in]; G for private inputs [G, B, in] (then T = G).
    `sparse`/`dense` are the raw inputs (the first-order term of deepfm reads them).
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
        fm_task_scale: bool = False,
    ):
        super().__init__()
        self.kind, self.groups, self.num_tasks = kind, groups, num_tasks
        self.cross = nn.ModuleList()
        if kind == "dcn":
            self.cross.extend(CrossLayer(groups, in_dim) for _ in range(cross_layers))
        self.fm_fields = 0
        self.fm_scale: nn.Parameter | None = None
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
            self.first_order = FirstOrder(spec, groups)
            if fm_task_scale:
                self.fm_scale = nn.Parameter(torch.ones(num_tasks, 1))
        self.out_dim = in_dim

    def forward(
        self,
        x: torch.Tensor,
        sparse: torch.Tensor | None = None,
        dense: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.kind == "dcn":
            grouped = x.unsqueeze(0) if x.dim() == 2 else x
            h = grouped
            for layer in self.cross:
                h = layer(grouped, h)
            return (h[0] if x.dim() == 2 else h), None
        if self.kind == "deepfm":
            assert sparse is not None and dense is not None, "deepfm reads the raw inputs"
            width = self.fm_fields * self.fm_dim
            fields = x[..., :width].unflatten(-1, (self.fm_fields, self.fm_dim))
            second = factorization_machine(fields)  # [B] or [G, B]
            fm = self.first_order(sparse, dense) + second  # [G, B]
            fm = fm.expand(self.num_tasks, -1) if fm.shape[0] == 1 else fm  # [T, B]
            return x, fm if self.fm_scale is None else self.fm_scale * fm
        return x, None
