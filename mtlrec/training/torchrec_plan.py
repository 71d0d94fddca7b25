"""Where the torchrec backend's tables go (docs/distributed.md, "Where the tables go").

`plan_tables` asks TorchRec's `EmbeddingShardingPlanner` for a plan, or, when a resumed run
recorded one for the same number of ranks, rebuilds that plan from `sharding_plan.json`, so the
resumed run trains the same shards as the run that wrote the checkpoint.

Why the planner needs an order: TorchRec 1.8's `EmbeddingEnumerator` intersects the allowed
sharding types (and compute kernels) with the constrained ones as Python sets, so the order of
the options it enumerates for a table follows the strings' hashes, i.e. PYTHONHASHSEED. The
proposers sort each table's options by their estimated cost with a stable sort, and the planner
keeps the first plan of the lowest cost: where two options cost the same (in one process, a
`column_wise` table of one shard is `table_wise` under another name, at the same cost), the hash
seed picked the plan. `OrderedEnumerator` puts each table's options in a fixed order first
(`TIE_ORDER`, then TorchRec's order of compute kernels), so equal costs resolve the same way in
every process; the costs, the proposers and the partitioner are TorchRec's own.

TorchRec is imported inside the functions (it is an optional install, and `mtlrec` must import
without it: tests/test_dependencies.py); torchrec_backend calls them once TorchRec is known to load.
"""

from __future__ import annotations

import json
import logging
import re
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
from torch import nn

from mtlrec.errors import MtlrecError
from mtlrec.models.torchrec_embedding import feature_name
from mtlrec.training.torchrec_replicated import CUDA_SHARDED, DATA_PARALLEL, planner_types

if TYPE_CHECKING:
    from torchrec.distributed.planner.types import ShardingOption
    from torchrec.distributed.types import ShardingPlan

log = logging.getLogger(__name__)

# Of options the planner rates the same, the first of these wins: a whole table on one rank,
# then the splits, from the fewest pieces and least traffic up (CUDA_SHARDED's order), a replica
# on every rank last.
TIE_ORDER = (*CUDA_SHARDED, DATA_PARALLEL)
_PLACEMENT = re.compile(r"rank:(\d+)/([a-z]+)(:\d+)?")  # a shard's place: rank:0/cuda:0


@cache
def kernel_order() -> list[str]:
    """TorchRec's compute kernels, in its own order."""
    from torchrec.distributed.embedding_types import EmbeddingComputeKernel

    return [kernel.value for kernel in EmbeddingComputeKernel]


@cache
def sharding_types() -> frozenset[str]:
    from torchrec.distributed.types import ShardingType

    return frozenset(kind.value for kind in ShardingType)


def _tie_rank(option: ShardingOption) -> tuple[int, int]:
    def index(order: Any, value: str) -> int:
        return list(order).index(value) if value in order else len(order)

    return index(TIE_ORDER, option.sharding_type), index(kernel_order(), option.compute_kernel)


@cache
def ordered_enumerator() -> type:
    """OrderedEnumerator: TorchRec's enumerator, each table's options in a fixed order (not the
    set's). A class made on first use, as TorchRec is imported only then."""
    from torchrec.distributed.planner.enumerators import EmbeddingEnumerator

    class OrderedEnumerator(EmbeddingEnumerator):
        def enumerate(self, module: nn.Module, sharders: list[Any]) -> list[ShardingOption]:
            options = super().enumerate(module, sharders)
            first: dict[str, int] = {}
            for option in options:  # the tables stay in TorchRec's order
                first.setdefault(option.fqn, len(first))
            return sorted(options, key=lambda o: (first[o.fqn], *_tie_rank(o)))  # stable

    return OrderedEnumerator


def column_width(dim: int, world: int) -> int:
    """The width of a column-wise shard: the table split evenly over the ranks when the parts
    stay multiples of 4 (FBGEMM's tables), else whole (TorchRec's default would not split a
    table narrower than 128 columns at all)."""
    width = dim // world
    return width if dim % world == 0 and width % 4 == 0 else dim


def make_planner(shapes: list[tuple[int, int]], cfg: Any, device: torch.device, world: int) -> Any:
    """TorchRec's planner for tables of `shapes` on `world` ranks of `device` (trainer.* `cfg`),
    with the ordered enumerator."""
    from torchrec.distributed.planner import (
        EmbeddingShardingPlanner,
        ParameterConstraints,
        Topology,
    )
    from torchrec.distributed.planner.constants import BATCH_SIZE

    types = planner_types(cfg.sharding, device, cfg.embedding_optimizer)
    constraints = {
        feature_name(j): ParameterConstraints(
            sharding_types=types, min_partition=column_width(dim, world)
        )
        for j, (_, dim) in enumerate(shapes)
    }
    cap: dict[str, int] = {}
    if cfg.shard_memory_mb is not None:
        key = "hbm_cap" if device.type == "cuda" else "ddr_cap"
        cap = {key: cfg.shard_memory_mb * 1024 * 1024}
    topology = Topology(world_size=world, compute_device=device.type, **cap)
    # the planner's default batch size, which it would give its own enumerator
    enumerator = ordered_enumerator()(topology, BATCH_SIZE, constraints=constraints)
    return EmbeddingShardingPlanner(
        topology=topology, constraints=constraints, enumerator=enumerator
    )


def plan_tables(
    collections: nn.Module,
    shapes: list[tuple[int, int]],
    cfg: Any,
    device: torch.device,
    recorded: dict[str, Any] | None,
) -> Any:
    """The ShardingPlan of `collections` (rank 0's, on every rank): `recorded` (a resumed run's
    plan for as many ranks, `recorded_tables`) rebuilt, else the planner's (`refusal`: no plan
    fits the ranks' memory)."""
    from torchrec.distributed.embedding import EmbeddingCollectionSharder
    from torchrec.distributed.planner.types import PlannerError

    plan = None
    if recorded is not None:
        plan = _rebuilt(collections, shapes, recorded["tables"], recorded["source"], device)
    else:
        try:
            planner = make_planner(shapes, cfg, device, dist.get_world_size())
            plan = planner.plan(collections, [EmbeddingCollectionSharder()])
        except PlannerError:
            plan = None  # every rank plans; rank 0's plan (or its refusal) is what all use
    if dist.get_world_size() > 1:
        chosen = [plan]
        dist.broadcast_object_list(chosen, src=0)
        plan = chosen[0]
    return plan


def plan_record(plan: Any) -> dict[str, dict[str, Any]]:
    """{table: its sharding type, kernel, ranks and shards}: what sharding_plan.json keeps."""
    out: dict[str, dict[str, Any]] = {}
    for params in plan.plan.values():
        for name, spec in params.items():
            shards = spec.sharding_spec.shards if spec.sharding_spec is not None else []
            out[name] = {
                "sharding_type": spec.sharding_type,
                "compute_kernel": spec.compute_kernel,
                "ranks": list(spec.ranks or []),
                "shards": [
                    {
                        "offsets": list(s.shard_offsets),
                        "sizes": list(s.shard_sizes),
                        "placement": str(s.placement),
                    }
                    for s in shards
                ],
            }
    return out


def recorded_tables(path: Path | None, world: int) -> dict[str, Any] | None:
    """The tables of the plan recorded at `path` (a resumed run's sharding_plan.json) when it
    was made for `world` ranks; None (the planner places the tables again): no such file, or
    another number of ranks (a checkpoint's shards then load resharded)."""
    if path is None or not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
        made_for, tables = record["world_size"], record["tables"]
        if not isinstance(tables, dict):
            raise TypeError(f"tables is a {type(tables).__name__}, not an object")
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise MtlrecError(
            f"{path}: not a readable sharding plan ({type(e).__name__}: {e}); restore it from "
            "a copy of the run dir, or delete it to let the planner place the tables again"
        ) from None
    if made_for != world:
        log.info(
            "torchrec: %s was planned for %s rank(s), this run has %d: the planner places the "
            "tables again",
            path,
            made_for,
            world,
        )
        return None
    log.info("torchrec: the tables keep the plan of %s (%d rank(s))", path, world)
    return {"tables": tables, "source": path}


def _module_paths(collections: nn.Module) -> dict[str, str]:
    """{table name: the path of the EmbeddingCollection holding it, as the planner names it}."""
    from torchrec.modules.embedding_modules import EmbeddingCollection

    return {
        table.name: path
        for path, module in collections.named_modules()
        if isinstance(module, EmbeddingCollection)
        for table in module.embedding_configs()
    }


def _rebuilt(
    collections: nn.Module,
    shapes: list[tuple[int, int]],
    tables: dict[str, Any],
    source: Path,
    device: torch.device,
) -> ShardingPlan:
    """The ShardingPlan `plan_record` recorded, checked against this run's tables and ranks."""
    from torchrec.distributed.types import (
        EmbeddingModuleShardingPlan,
        EnumerableShardingSpec,
        ParameterSharding,
        ShardingPlan,
        ShardMetadata,
    )

    paths, plan = _module_paths(collections), ShardingPlan({})
    world = dist.get_world_size()
    for j, shape in enumerate(shapes):
        name = feature_name(j)
        spec = tables.get(name)
        problem = _mismatch(spec, list(shape), world, device.type)
        if problem is not None:
            raise MtlrecError(
                f"{source}: the plan of {name} ({problem}) does not fit this run's "
                f"{shape[0]:,} x {shape[1]} table on {world} rank(s); restore it from a copy "
                "of the run dir, or delete it to let the planner place the tables again"
            )
        assert spec is not None
        shards = [ShardMetadata(s["offsets"], s["sizes"], s["placement"]) for s in spec["shards"]]
        module_plan = plan.plan.setdefault(paths[name], EmbeddingModuleShardingPlan())
        module_plan[name] = ParameterSharding(
            sharding_type=spec["sharding_type"],
            compute_kernel=spec["compute_kernel"],
            ranks=list(spec["ranks"]) or None,
            sharding_spec=EnumerableShardingSpec(shards) if shards else None,
        )
    return plan


def _ints(values: Any) -> list[int]:
    """A recorded list of whole numbers (TypeError: anything else)."""
    if not isinstance(values, list) or not all(type(v) is int for v in values):
        raise TypeError(f"{values!r} is not a list of whole numbers")
    return values


def _mismatch(spec: Any, shape: list[int], world: int, device_type: str) -> str | None:
    """What in a recorded table plan does not fit a table of `shape` on `world` ranks of
    `device_type` (a plan made on CUDA, resumed on CPU: its shards' placements)."""
    if not isinstance(spec, dict):
        return "missing"
    try:
        kind, ranks, shards = spec["sharding_type"], spec["ranks"], spec["shards"]
        kernel = spec["compute_kernel"]
        boxes = [(_ints(s["offsets"]), _ints(s["sizes"]), str(s["placement"])) for s in shards]
        ranks = _ints(ranks)
    except (KeyError, TypeError) as e:
        return f"{type(e).__name__}: {e}"
    if not isinstance(kind, str) or kind not in sharding_types() or kernel not in kernel_order():
        return f"sharding_type {kind!r}, compute_kernel {kernel!r}"
    if kind == DATA_PARALLEL:
        return None if not boxes else "a replica with shards"
    placed = [_PLACEMENT.fullmatch(p) for _, _, p in boxes]
    if not boxes or any(not 0 <= r < world for r in ranks):
        return f"{kind} on rank(s) {ranks}"
    if not all(m is not None and int(m[1]) < world and m[2] == device_type for m in placed):
        return f"placements {[p for _, _, p in boxes]}"
    inside = all(
        len(o) == len(s) == 2
        and all(a >= 0 and a + b <= n for a, b, n in zip(o, s, shape, strict=True))
        for o, s, _ in boxes
    )
    area = sum(s[0] * s[1] for _, s, _ in boxes)
    if not inside or area != shape[0] * shape[1]:
        return f"shards {[s for _, s, _ in boxes]}"
    return None
