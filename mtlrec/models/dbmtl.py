"""DBMTL: Deep Bayesian Multi-Target Learning (relation towers over a task graph).

Wen, Zhang, Lin, Lv, Li & Zhang (Alibaba), "Deep Bayesian Multi-Target Learning for Recommender
Systems", arXiv:1902.09154, 2019; the model as shipped in Alibaba's EasyRec and TorchEasyRec
(`DBMTL`: bottom, task towers, relation towers). The paper factorises the joint likelihood of the
targets along a chain, p(y_1, y_2 | x) = p(y_1 | x) p(y_2 | y_1, x): a downstream target reads the
hidden representation of its upstream targets.

    b     = bottom(Embedding(sparse) ++ dense)          an MLP (bottom: mlp) or MMoE (bottom: mmoe)
    t_k   = tower_k(b_k)                                b_k = b, or MMoE's mixture for task k
    r_k   = relation_k( t_k ++ r_{u_1} ++ ... ++ r_{u_n} )     u_1..u_n: task k's upstream tasks
    y_k   = w_k . r_k + c_k

`relations` is the task graph, {task: [upstream tasks]}, over the tasks' output names; it must be
acyclic and tasks are computed upstream first. null (the default) is the chain in the dataset's
task order (each task reads the one before it: ctr -> cvr on the click -> conversion data); {}
is no link at all (DBMTL without relations). Gradients flow through the links (no stop-gradient,
as in EasyRec). bottom_dims = [] (with bottom: mlp) lets the towers read the embedding itself.

With bottom: mmoe the gate weights are returned as "gates" [B, tasks, experts].

Config keys (conf/model/dbmtl.yaml): embedding_dim, embedding_init_std, bottom, bottom_dims,
num_experts, tower_dims, relation_dims, relations, activation, dropout, batch_norm.
Outputs: one per task, named after the task.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from mtlrec.data.spec import DatasetSpec, TaskSpec
from mtlrec.errors import MtlrecError
from mtlrec.models.base import MultiTaskModel
from mtlrec.models.layers import (
    MLP,
    CommonConfig,
    FeatureEmbedding,
    MixtureOfExperts,
    check_dims,
    check_positive,
    last_weight,
)
from mtlrec.models.registry import register

BOTTOMS = ("mlp", "mmoe")


@dataclass
class DbmtlConfig(CommonConfig):
    bottom: str = "mlp"
    bottom_dims: list[int] = field(default_factory=lambda: [64])
    num_experts: int = 4
    tower_dims: list[int] = field(default_factory=lambda: [32])
    relation_dims: list[int] = field(default_factory=lambda: [16])
    relations: dict[str, list[str]] | None = None

    def validate(self) -> None:
        super().validate()
        if self.bottom not in BOTTOMS:
            raise MtlrecError(
                f"model.bottom '{self.bottom}' is unknown; use one of {list(BOTTOMS)}"
            )
        check_dims("model.bottom_dims", self.bottom_dims, allow_empty=self.bottom == "mlp")
        check_positive("model.num_experts", self.num_experts)
        check_dims("model.tower_dims", self.tower_dims, allow_empty=True)
        check_dims("model.relation_dims", self.relation_dims, allow_empty=True)


def task_order(names: list[str], relations: dict[str, list[str]] | None) -> dict[str, list[str]]:
    """{task: upstream tasks} in an order where every task comes after its upstream ones."""
    if relations is None:  # the chain in dataset order
        graph = {n: ([names[i - 1]] if i else []) for i, n in enumerate(names)}
    else:
        for task, ups in relations.items():
            for n in [task, *ups]:
                if n not in names:
                    raise MtlrecError(
                        f"model.relations: '{n}' is not a task of this run; the tasks are {names}"
                    )
            if task in ups:
                raise MtlrecError(f"model.relations.{task} lists the task itself")
        graph = {n: list(relations.get(n, [])) for n in names}
    ordered: dict[str, list[str]] = {}
    while len(ordered) < len(graph):
        ready = [n for n in graph if n not in ordered and all(u in ordered for u in graph[n])]
        if not ready:
            cycle = sorted(n for n in graph if n not in ordered)
            raise MtlrecError(
                f"model.relations has a cycle among tasks {cycle}; a task graph must be acyclic"
            )
        ordered.update((n, graph[n]) for n in ready)
    return ordered


@register("dbmtl")
class Dbmtl(MultiTaskModel):
    Config = DbmtlConfig

    def __init__(self, spec: DatasetSpec, tasks: tuple[TaskSpec, ...], cfg: DbmtlConfig):
        super().__init__()
        self.output_names = [t.output_name for t in tasks]
        self.output_types = {t.output_name: t.type for t in tasks}
        self.graph = task_order(self.output_names, cfg.relations)
        self.embedding = FeatureEmbedding(spec, cfg.embedding_dim, cfg.embedding_init_std)
        act, drop, bn = cfg.activation, cfg.dropout, cfg.batch_norm
        in_dim = self.embedding.out_dim
        self.mixture: MixtureOfExperts | None = None
        self.bottom: MLP | None = None
        if cfg.bottom == "mmoe":
            self.mixture = MixtureOfExperts(
                in_dim, cfg.num_experts, cfg.bottom_dims, len(tasks), (), act, drop, bn
            )
            in_dim = self.mixture.out_dim
        elif cfg.bottom_dims:
            self.bottom = MLP(in_dim, cfg.bottom_dims, act, drop, bn)
            in_dim = self.bottom.out_dim
        self.towers = nn.ModuleDict()
        self.relation = nn.ModuleDict()
        self.heads = nn.ModuleDict()
        for name in self.output_names:
            if not cfg.relation_dims and self.graph[name]:
                raise MtlrecError(
                    f"model.relation_dims=[] leaves no relation layer for task '{name}' to read "
                    f"its upstream tasks {self.graph[name]}; set model.relation_dims or "
                    f"model.relations={{}}"
                )
            tower = MLP(in_dim, cfg.tower_dims, act, drop, bn)
            upstream = len(self.graph[name]) * (cfg.relation_dims[-1] if cfg.relation_dims else 0)
            relation = MLP(tower.out_dim + upstream, cfg.relation_dims, act, drop, bn)
            self.towers[name], self.relation[name] = tower, relation
            self.heads[name] = nn.Linear(relation.out_dim, 1)

    def forward(self, sparse: torch.Tensor, dense: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.embedding(sparse, dense)
        out: dict[str, torch.Tensor] = {}
        if self.mixture is not None:
            mixed, gates = self.mixture(x)  # [T, B, H], [T, B, E]
            inputs = {n: mixed[k] for k, n in enumerate(self.output_names)}
            out["gates"] = gates.transpose(0, 1)
        else:
            b = self.bottom(x) if self.bottom is not None else x
            inputs = {n: b for n in self.output_names}
        related: dict[str, torch.Tensor] = {}
        for name, upstream in self.graph.items():
            parts = [self.towers[name](inputs[name])] + [related[u] for u in upstream]
            related[name] = self.relation[name](torch.cat(parts, dim=-1))
            out[name] = self.heads[name](related[name]).squeeze(-1)
        return {**{n: out[n] for n in self.output_names}, **out}

    def shared_trunk_last_layer(self) -> nn.Parameter | None:
        """The bottom's last layer (MMoE: the experts' output layer); None without a bottom."""
        if self.mixture is not None:
            return last_weight(self.mixture.experts)
        return last_weight(self.bottom) if self.bottom is not None else None
