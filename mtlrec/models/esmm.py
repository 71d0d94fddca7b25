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
in log space (mtlrec.models.logspace.product_logit), so its loss never takes the log of a product
that underflowed to 0 and its gradients stay finite for confident towers.

Generalized (ESM2-style path decomposition, Wen et al., SIGIR 2020): a `chain` of n label columns
s_1 .. s_n, each over all impressions and 1 only when every earlier step happened (e.g.
[click, cart, purchase]). One tower per step gives the conditional probability, and each step's
probability is the product of the conditionals up to it:

    c_k    = sigmoid(tower_k(.))           p(s_k | s_{k-1}, impression)     (c_1 = p(s_1 | impression))
    p(s_k) = c_1 * c_2 * ... * c_k         p(s_k | impression)
    loss   = sum_k w_k BCE(p(s_k), s_k) over all impressions

Output names: for the default 2-step funnel (chain: null) ctr, cvr, ctcvr as above; for an explicit
chain, p(s_k) is named after its label column (e.g. `purchase`) and c_k (k >= 2) is
`{s_k}_given_{s_(k-1)}` (e.g. `purchase_given_cart`). The loss tasks are the p(s_k).

Backbone below the towers (`backbone`): `mlp` = every tower reads the shared embedding (the paper);
`mmoe` = shared experts with one softmax gate per step, tower k reads its mixture; `ple` = PLE
extraction levels (see ple.py), tower k reads its task representation; `deepfm` / `dcn` = the
feature-interaction backbones of interaction.py (an FM term added to every tower's logit / DCN-v2
cross layers the towers read). With mmoe/ple the model returns "gates" [B, steps, experts] too
(the gate of step k's tower is logged under the k-th loss task, e.g. gate/ctcvr/... is the CVR
tower's gate).

ESMM-NS (the paper's ablation, `share_embedding: false`): every tower gets its own embedding
table, so the CTR task no longer transfers what it learns from the many clicks to the CVR tower
(only the product in the CTCVR loss links them). Needs backbone mlp, deepfm or dcn.

Config keys (conf/model/esmm.yaml): embedding_dim, embedding_init_std, tower_dims, ctr_tower_dims,
cvr_tower_dims, activation, dropout, batch_norm, ctr_weight, ctcvr_weight, chain, chain_weights,
backbone, num_experts, expert_dims, num_levels, num_shared_experts, num_specific_experts,
share_embedding, cross_layers, fm_task_scale.
Outputs: ctr, cvr, ctcvr (logits) for the default funnel; see above for a chain.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from mtlrec.data.spec import DatasetSpec, TaskSpec
from mtlrec.errors import MtlrecError
from mtlrec.models.base import MultiTaskModel, require_funnel
from mtlrec.models.interaction import BACKBONES as INTERACTION_BACKBONES
from mtlrec.models.interaction import FeatureInteraction, check_backbone
from mtlrec.models.layers import (
    MLP,
    CommonConfig,
    FeatureEmbedding,
    MixtureOfExperts,
    check_dims,
    check_positive,
    first_table,
    last_weight,
)
from mtlrec.models.logspace import product_logit
from mtlrec.models.ple import PleExtractor, check_ple_experts
from mtlrec.models.registry import register

BACKBONES = ("mlp", "mmoe", "ple", *INTERACTION_BACKBONES[1:])


@dataclass
class EsmmConfig(CommonConfig):
    tower_dims: list[int] = field(default_factory=lambda: [64, 32])
    ctr_tower_dims: list[int] | None = None
    cvr_tower_dims: list[int] | None = None
    ctr_weight: float = 1.0
    ctcvr_weight: float = 1.0
    chain: list[str] | None = None
    chain_weights: list[float] | None = None
    backbone: str = "mlp"
    num_experts: int = 8
    expert_dims: list[int] = field(default_factory=lambda: [64, 32])
    num_levels: int = 1
    num_shared_experts: int = 2
    num_specific_experts: int = 1
    share_embedding: bool = True
    cross_layers: int = 2
    fm_task_scale: bool = False

    def validate(self) -> None:
        super().validate()
        check_dims("model.tower_dims", self.tower_dims)
        check_dims("model.ctr_tower_dims", self.ctr_tower_dims or self.tower_dims)
        check_dims("model.cvr_tower_dims", self.cvr_tower_dims or self.tower_dims)
        check_chain(self.chain, self.chain_weights)
        check_backbone(self.backbone, self.cross_layers, BACKBONES)
        if not self.share_embedding and self.backbone in ("mmoe", "ple"):
            raise MtlrecError(
                f"model.share_embedding=false needs model.backbone mlp, deepfm or dcn (a "
                f"{self.backbone} backbone mixes one shared input), got {self.backbone}"
            )
        if self.backbone in ("mmoe", "ple"):
            check_dims("model.expert_dims", self.expert_dims)
            check_positive("model.num_experts", self.num_experts)
            check_positive("model.num_levels", self.num_levels)
            check_ple_experts(self.num_shared_experts, self.num_specific_experts)


def check_chain(chain: list[str] | None, weights: list[float] | None) -> None:
    if chain is not None:
        chain = list(chain)
        if len(chain) < 2 or not all(isinstance(c, str) and c for c in chain):
            raise MtlrecError(
                f"model.chain must list two or more label columns, e.g. [click, cart, purchase]; got {chain}"
            )
        if len(set(chain)) != len(chain):
            raise MtlrecError(f"model.chain lists a label column twice: {chain}")
    if weights is not None:
        n = len(chain) if chain is not None else 2
        if len(weights) != n or not all(
            isinstance(w, (int, float)) and math.isfinite(w) and w >= 0 for w in weights
        ):
            raise MtlrecError(
                f"model.chain_weights must hold {n} numbers >= 0 (one per chain step), got {list(weights)}"
            )


@dataclass(frozen=True)
class ChainStep:
    label: str  # label column: 1 iff this step (and so every earlier one) happened
    output: str  # name of p(step | impression): a loss task and an output
    conditional: str  # name of p(step | previous step): the step tower's output
    weight: float


def resolve_chain(
    spec: DatasetSpec,
    chain: list[str] | None,
    weights: list[float] | None,
    model: str,
    funnel_weights: tuple[float, float] = (1.0, 1.0),
) -> list[ChainStep]:
    """The steps of a conversion chain: the dataset's click -> conversion funnel when `chain` is
    null (outputs ctr, cvr, ctcvr), else the named label columns."""
    if chain is None:
        f = require_funnel(spec, model)
        w = list(weights) if weights is not None else list(funnel_weights)
        return [
            ChainStep(f.click, "ctr", "ctr", float(w[0])),
            ChainStep(f.conversion, "ctcvr", "cvr", float(w[1])),
        ]
    missing = [c for c in chain if c not in spec.labels]
    if missing:
        raise MtlrecError(
            f"model.chain: column(s) {missing} are not labels of dataset '{spec.name}'; "
            f"its labels are {list(spec.labels)}"
        )
    w = list(weights) if weights is not None else [1.0] * len(chain)
    return [
        ChainStep(c, c, c if k == 0 else f"{c}_given_{chain[k - 1]}", float(w[k]))
        for k, c in enumerate(chain)
    ]


@register("esmm")
class Esmm(MultiTaskModel):
    Config = EsmmConfig
    trains_dataset_tasks = False  # its loss tasks come from the funnel

    @classmethod
    def loss_tasks(
        cls, spec: DatasetSpec, selected: tuple[TaskSpec, ...], cfg: EsmmConfig
    ) -> tuple[TaskSpec, ...]:
        steps = resolve_chain(
            spec, cfg.chain, cfg.chain_weights, "esmm", (cfg.ctr_weight, cfg.ctcvr_weight)
        )
        return tuple(TaskSpec(s.output, s.label, "binary", weight=s.weight) for s in steps)

    def __init__(self, spec: DatasetSpec, tasks: tuple[TaskSpec, ...], cfg: EsmmConfig):
        super().__init__()
        self.steps = resolve_chain(
            spec, cfg.chain, cfg.chain_weights, "esmm", (cfg.ctr_weight, cfg.ctcvr_weight)
        )
        names = [s.conditional for s in self.steps] + [s.output for s in self.steps]
        self.output_types = {name: "binary" for name in names}
        n = len(self.steps)
        self.shared = cfg.share_embedding
        self.embedding = FeatureEmbedding(
            spec, cfg.embedding_dim, cfg.embedding_init_std, copies=1 if self.shared else n
        )
        in_dim = self.embedding.out_dim
        self.interaction = FeatureInteraction(
            cfg.backbone if cfg.backbone in INTERACTION_BACKBONES else "mlp",
            spec,
            cfg.embedding_dim,
            in_dim,
            n,
            cfg.cross_layers,
            groups=1 if self.shared else n,
            fm_task_scale=cfg.fm_task_scale,
        )
        self.backbone = mixture_backbone(cfg, in_dim, n)
        if self.backbone is not None:
            in_dim = int(self.backbone.out_dim)  # type: ignore[arg-type]
        self.tower_in_dim = in_dim
        if cfg.chain is None:
            towers = {
                "ctr": cfg.ctr_tower_dims or cfg.tower_dims,
                "cvr": cfg.cvr_tower_dims or cfg.tower_dims,
            }
        else:
            towers = {s.conditional: cfg.tower_dims for s in self.steps}
        self.towers = nn.ModuleDict()
        for name, dims in towers.items():
            body = MLP(in_dim, dims, cfg.activation, cfg.dropout, cfg.batch_norm)
            self.towers[name] = nn.Sequential(body, nn.Linear(body.out_dim, 1))

    def step_inputs(
        self, sparse: torch.Tensor, dense: torch.Tensor, out: dict[str, torch.Tensor]
    ) -> tuple[list[torch.Tensor], torch.Tensor | None]:
        """What each step's tower reads, and the FM logit term per step (deepfm) or None."""
        x, fm = self.interaction(self.embedding(sparse, dense), sparse, dense)
        if isinstance(self.backbone, MixtureOfExperts):
            reps, gates = self.backbone(x)  # [steps, B, H], [steps, B, E]
            out["gates"] = gates.transpose(0, 1)
            return list(reps), fm
        if self.backbone is not None:
            reps, out["gates"] = self.backbone(x)
            return list(reps), fm
        if self.shared:
            return [x] * len(self.steps), fm  # the paper: every tower reads the shared embedding
        return list(x), fm  # ESMM-NS: tower k reads its own embedding [steps, B, in]

    def forward(self, sparse: torch.Tensor, dense: torch.Tensor) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        reps, fm = self.step_inputs(sparse, dense, out)
        self.chain_outputs(reps, fm, out)
        return out

    def chain_outputs(
        self, reps: list[torch.Tensor], fm: torch.Tensor | None, out: dict[str, torch.Tensor]
    ) -> None:
        """Each step's conditional logit and the chain's products, into `out`."""
        cumulative = None
        for k, step in enumerate(self.steps):
            conditional = self.towers[step.conditional](reps[k]).squeeze(-1)
            if fm is not None:
                conditional = conditional + fm[k]
            out[step.conditional] = conditional
            # p(s_k) = p(s_{k-1}) * p(s_k | s_{k-1}), as a logit computed in log space
            cumulative = (
                conditional if cumulative is None else product_logit(cumulative, conditional)
            )
            out[step.output] = cumulative

    def shared_trunk_last_layer(self) -> nn.Parameter | None:
        """What every step's tower reads last: the experts' output layer (mmoe; the last level's
        for ple), the last cross layer (dcn), else the embedding table (mlp, deepfm: the paper's
        trunk is the shared embedding; in ESMM-NS the CTR copy, which the CTCVR loss reaches too)."""
        if isinstance(self.backbone, MixtureOfExperts):
            return last_weight(self.backbone.experts)
        if isinstance(self.backbone, PleExtractor):
            return self.backbone.last_layer()
        if len(self.interaction.cross):
            return last_weight(self.interaction.cross[-1])
        return first_table(self.embedding)


def mixture_backbone(cfg: EsmmConfig, in_dim: int, steps: int) -> nn.Module | None:
    """The mmoe / ple backbone below the towers, or None."""
    act, drop, bn = cfg.activation, cfg.dropout, cfg.batch_norm
    if cfg.backbone == "mmoe":
        return MixtureOfExperts(in_dim, cfg.num_experts, cfg.expert_dims, steps, (), act, drop, bn)
    if cfg.backbone == "ple":
        return PleExtractor(
            in_dim,
            steps,
            cfg.num_levels,
            cfg.num_shared_experts,
            cfg.num_specific_experts,
            cfg.expert_dims,
            act,
            drop,
            bn,
        )
    return None
