"""trainer.embedding_backend=torchrec: the model's tables sharded by TorchRec, trained by FBGEMM's
fused optimizers (docs/distributed.md, "TorchRec backend").

`shard_model` turns every FieldEmbedding of a built model into a TorchRecFieldEmbedding
(mtlrec.models.torchrec_embedding), lets TorchRec's `EmbeddingShardingPlanner` place the tables
on the ranks within each rank's memory (`Topology`; trainer.sharding forces a type,
trainer.shard_memory_mb sets the budget) and wraps the collections in `DistributedModelParallel`.
The table optimizer (trainer.embedding_optimizer) is registered with
`apply_optimizer_in_backward`: FBGEMM's kernels update each looked-up row inside the backward
pass, so the trainer's optimizer holds the dense parameters only. One process trains through a
process group of one rank (gloo on a private store), the same code as N ranks.

Checkpoints of one process (and with checkpoint.sharded=gathered) keep the ordinary layout: the
tables and the fused optimizer's state are gathered into full tensors (`tables.<j>.weight` in the
model state, `fused_tables` in the optimizer state) and scattered back into the shards on resume.
Several ranks write their shards to a DCP folder instead (mtlrec.training.torchrec_checkpoint).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
from torch import nn

from mtlrec.errors import MtlrecError
from mtlrec.models.torchrec_embedding import (
    TorchRecFieldEmbedding,
    convert_model,
    feature_name,
    torchrec_layers,
)
from mtlrec.training.optimizers import MultiOptimizer
from mtlrec.training.torchrec_init import copy_into, local_pieces, write_initial
from mtlrec.training.torchrec_quiet import quiet_import, quiet_sharding
from mtlrec.training.torchrec_replicated import (
    DATA_PARALLEL,
    REPLICATED_OPTIMIZERS,
    names_text,
    replicated_names,
    replicated_optimizer,
    single_id_bag_tables,
)

if TYPE_CHECKING:
    from mtlrec.training.balance import BalanceSettings

log = logging.getLogger(__name__)

SHARDINGS = ("auto", "table_wise", "column_wise", "row_wise", "data_parallel")
# trainer.embedding_optimizer -> (torchrec optimizer class name, runs on the CPU)
FUSED_OPTIMIZERS = {
    "auto": ("RowWiseAdagrad", True),
    "rowwise_adagrad": ("RowWiseAdagrad", True),
    "adagrad": ("Adagrad", True),
    "sgd": ("SGD", True),
    "adam": ("Adam", False),
    "rowwise_adam": ("PartialRowWiseAdam", False),
}
NATIVE_ONLY = ("sparse_adam",)
TORCHREC_ONLY = ("rowwise_adagrad", "sgd", "rowwise_adam")
INSTALL = "bash scripts/install_torchrec.sh (docs/distributed.md)"
# the run dir's record of where the tables live (runs.records.SHARDING_PLAN_FILE: the training
# layer does not import runs/)
SHARDING_PLAN_FILE = "sharding_plan.json"


def torchrec_missing() -> str | None:
    """Why TorchRec cannot be used here (None: it imports)."""
    try:
        with quiet_import():
            import fbgemm_gpu  # noqa: F401
            import torchrec  # noqa: F401
    except Exception as e:  # ImportError, or fbgemm's OSError for a CUDA build on a CPU machine
        return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}".strip()
    return None


def check_settings(trainer: Any, device_type: str, balance: BalanceSettings) -> None:
    """What the torchrec backend refuses, one line each, before anything is written."""

    if trainer.embedding_backend == "native":
        if trainer.embedding_optimizer in TORCHREC_ONLY or trainer.sharding != "auto":
            what = (
                f"trainer.sharding={trainer.sharding}"
                if trainer.sharding != "auto"
                else f"trainer.embedding_optimizer={trainer.embedding_optimizer}"
            )
            raise MtlrecError(f"{what} needs trainer.embedding_backend=torchrec")
        return
    if trainer.embedding_optimizer in NATIVE_ONLY:
        raise MtlrecError(
            f"trainer.embedding_optimizer={trainer.embedding_optimizer} is the native backend's; "
            "with trainer.embedding_backend=torchrec use rowwise_adagrad, adagrad or sgd "
            "(CPU and CUDA) or adam, rowwise_adam (CUDA)"
        )
    if trainer.shard_memory_mb is not None and not (
        isinstance(trainer.shard_memory_mb, int) and trainer.shard_memory_mb >= 1
    ):
        raise MtlrecError(
            f"trainer.shard_memory_mb must be an integer >= 1 or null, got {trainer.shard_memory_mb!r}"
        )
    on_cpu = device_type == "cpu" or (device_type == "auto" and not torch.cuda.is_available())
    if on_cpu and not FUSED_OPTIMIZERS[trainer.embedding_optimizer][1]:
        raise MtlrecError(
            f"trainer.embedding_optimizer={trainer.embedding_optimizer}: FBGEMM has no CPU kernel "
            "for it; on the CPU use rowwise_adagrad, adagrad or sgd"
        )
    if on_cpu and trainer.sharding == "row_wise":
        raise MtlrecError(
            "trainer.sharding=row_wise needs nccl (CUDA GPUs); on the CPU (gloo) use table_wise "
            "or column_wise"
        )
    if (
        trainer.sharding == DATA_PARALLEL
        and trainer.embedding_optimizer not in REPLICATED_OPTIMIZERS
    ):
        raise MtlrecError(
            f"trainer.sharding=data_parallel trains the replicated tables with a torch optimizer, "
            f"which has no counterpart of FBGEMM's {trainer.embedding_optimizer} (it would move "
            "every row); use rowwise_adagrad, adagrad or sgd, or another trainer.sharding"
        )
    if trainer.precision == "fp16":
        raise MtlrecError(
            "trainer.precision=fp16 does not work with trainer.embedding_backend=torchrec (FBGEMM's "
            "fused optimizer would step the tables with GradScaler's scaled gradients); use "
            "trainer.precision=bf16 or fp32"
        )
    refused = {
        "trainer.embedding_l2 > 0": trainer.embedding_l2 > 0,
        f"trainer.ema_decay={trainer.ema_decay}": trainer.ema_decay is not None,
        "trainer.compile=true": trainer.compile,
        f"trainer.accumulate_batches={trainer.accumulate_batches}": trainer.accumulate_batches > 1,
        f"balance={balance.name}": balance.cls.writes_grads,
    }
    for what, bad in refused.items():
        if bad:
            raise MtlrecError(
                f"{what} does not work with trainer.embedding_backend=torchrec (the fused "
                "optimizer updates the tables inside the backward pass); use the native backend"
            )
    reason = torchrec_missing()
    if reason is not None:
        raise MtlrecError(
            f"trainer.embedding_backend=torchrec: TorchRec does not import ({reason}); "
            f"install it with {INSTALL}"
        )


def draws_in_shards(cfg: Any, init_from: Any, resuming: bool) -> bool:
    """Whether the model is built with its seeded tables on the meta device, each rank drawing
    (or a resume loading) only its shards (training/torchrec_init.py): with this backend, unless
    init_from copies whole tables into the native model first (a resume's are loaded later)."""
    return cfg.embedding_backend == "torchrec" and (init_from is None or resuming)


def ensure_process_group(device: torch.device) -> None:
    """One process: a process group of one rank (TorchRec's sharded modules need one)."""
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)


@dataclass
class ShardedTables:
    """The sharded collections of one embedding layer and what the run dir records of them."""

    layer: TorchRecFieldEmbedding
    module: nn.Module  # DistributedModelParallel
    plan: dict[str, dict[str, Any]]
    replicated: torch.optim.Optimizer | None = None  # the data-parallel tables' optimizer


def _optimizer_class(name: str) -> type:
    import torchrec.optim as trec_optim

    return getattr(trec_optim, FUSED_OPTIMIZERS[name][0])


def shard_layer(
    layer: TorchRecFieldEmbedding,
    cfg: Any,
    device: torch.device,
    recorded: dict[str, Any] | None = None,
) -> ShardedTables:
    """`layer`'s tables sharded as `recorded` (torchrec_plan.recorded_tables) or the planner
    places them, its fused optimizer registered."""
    from torch.distributed.optim import _apply_optimizer_in_backward
    from torchrec.distributed import DistributedModelParallel
    from torchrec.distributed.embedding import EmbeddingCollectionSharder

    from mtlrec.training.torchrec_plan import plan_record, plan_tables

    odd = [d for _, d in layer.table_shapes if d % 4]
    if odd:
        raise MtlrecError(
            f"trainer.embedding_backend=torchrec: FBGEMM's tables need a width that is a multiple "
            f"of 4, got {odd[0]} (model.embedding_dim x copies); set model.embedding_dim to a multiple of 4"
        )
    collections = layer.collections
    lr = cfg.embedding_lr if cfg.embedding_lr is not None else cfg.lr
    _apply_optimizer_in_backward(
        _optimizer_class(cfg.embedding_optimizer), collections.parameters(), {"lr": lr}
    )
    plan = plan_tables(collections, layer.table_shapes, cfg, device, recorded)
    if plan is None:
        raise MtlrecError(_refusal(layer, cfg))
    record = plan_record(plan)
    names = [feature_name(j) for j in range(len(layer.table_shapes))]
    replicas = {j for j, name in enumerate(names) if record[name]["sharding_type"] == DATA_PARALLEL}
    module = DistributedModelParallel(
        collections,
        device=device,
        plan=plan,
        sharders=[EmbeddingCollectionSharder()],
        init_data_parallel=bool(replicas),
    )
    collections.single_id_bags = single_id_bag_tables(record, names, device)
    layer.__dict__["lookup"] = module  # a plain attribute: the model holds no table
    layer.read_tables = lambda: full_tables(module, replicas)
    layer.write_tables = lambda weights: _scatter(table_states(module), weights)
    # each rank its own shards, a big table drawn there (never whole: torchrec_init)
    write_initial(table_states(module), layer, one_process=dist.get_world_size() == 1)
    layer.lockstep = dist.get_world_size() > 1
    replicated = replicated_optimizer(module, cfg.embedding_optimizer, lr)
    return ShardedTables(layer, module, record, replicated)


class PeerCheckpointHooks:
    """The fit hooks of ranks other than 0 when tables are sharded: rank 0 alone writes the
    checkpoints, but gathering the tables and the fused optimizer's state for them is a
    collective, so the other ranks make the same gathers (in the same order as make_payload:
    model state, then optimizer state) and write nothing."""

    def __init__(self, model: nn.Module, optimizer: Any):
        self.model, self.optimizer = model, optimizer

    def _gather(self) -> None:
        self.model.state_dict()
        self.optimizer.state_dict()

    def on_checkpoint(self, state: Any) -> str:
        self._gather()
        return "rank 0's checkpoint"

    def on_epoch_end(self, row: dict[str, Any], is_best: bool, state: Any) -> None:
        self._gather()


def peer_hooks(model: nn.Module, optimizer: Any) -> PeerCheckpointHooks | None:
    """A rank other than 0's fit hooks (None: no sharded tables, or one process)."""
    if not getattr(model, "sharded_tables", None) or dist.get_world_size() == 1:
        return None
    return PeerCheckpointHooks(model, optimizer)


def _refusal(layer: TorchRecFieldEmbedding, cfg: Any) -> str:
    sizes = ", ".join(f"{r:,} x {d}" for r, d in layer.table_shapes)
    budget = f"{cfg.shard_memory_mb} MB" if cfg.shard_memory_mb is not None else "the device's"
    if cfg.sharding == DATA_PARALLEL:  # more ranks do not help: each holds a whole replica
        return (
            f"trainer.sharding=data_parallel: the embedding tables ({sizes}) and their optimizer "
            f"state do not fit one rank's {budget} memory (every rank holds a whole replica); "
            "raise trainer.shard_memory_mb or shard the tables "
            "(trainer.sharding=auto|table_wise|column_wise)"
        )
    return (
        f"trainer.sharding={cfg.sharding}: the embedding tables ({sizes}) and their optimizer "
        f"state do not fit {cfg.devices} rank(s) of {budget} memory; raise trainer.devices, "
        "trainer.shard_memory_mb, or let the tables be split (trainer.sharding=auto|column_wise)"
    )


def table_states(module: nn.Module) -> list[Any]:
    """The tables' weights as the sharded module holds them (ShardedTensor or a replica)."""

    state = module.state_dict()
    return [
        state[f"collections.{j}.embeddings.{feature_name(j)}.weight"] for j in range(len(state))
    ]


def _pieces(value: Any) -> tuple[list[int], list[tuple[list[int], torch.Tensor]]]:
    """(full size, [(offsets, tensor)] of the shards this rank holds) of a ShardedTensor, or a
    replica's whole value."""
    pieces = local_pieces(value)
    return list(value.size()), [(o, t.detach().cpu().clone()) for o, t in pieces]


def gather_full(local: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Every rank's shards of each named value -> the full tensors, on every rank (a collective:
    every rank calls it; a rank may hold no shard of a value, or not know the value at all)."""
    pieces = {name: _pieces(value) for name, value in local.items()}
    every = [pieces]
    if dist.get_world_size() > 1:
        every = [{} for _ in range(dist.get_world_size())]
        dist.all_gather_object(every, pieces)
    out: dict[str, torch.Tensor] = {}
    for rank_pieces in every:
        for name, (size, shards) in rank_pieces.items():
            for offsets, tensor in shards:
                if name not in out:
                    out[name] = torch.empty(size, dtype=tensor.dtype)
                index = tuple(slice(o, o + n) for o, n in zip(offsets, tensor.shape, strict=True))
                out[name][index] = tensor
    return out


def full_tables(module: nn.Module, replicas: set[int]) -> list[torch.Tensor]:
    """The full tables, on every rank; a replicated table is rank 0's copy (all are equal)."""
    states = table_states(module)
    rank = dist.get_rank()
    local = {str(j): s for j, s in enumerate(states) if j not in replicas or rank == 0}
    full = gather_full(local)
    return [full[str(j)] for j in range(len(states))]


def _scatter(states: list[Any], values: list[torch.Tensor]) -> None:
    for state, value in zip(states, values, strict=True):
        copy_into(state, value)


class FusedTables:
    """The fused optimizer's state as an optimizer part of a checkpoint (full tensors)."""

    def __init__(self, sharded: list[ShardedTables]):
        self.sharded = sharded
        self.in_state = True  # False: the state is in a DCP folder (torchrec_checkpoint)

    def _states(self) -> list[tuple[nn.Module, dict[str, Any]]]:
        out = []
        for s in self.sharded:
            fused = getattr(s.module, "fused_optimizer", None)
            if fused is not None:
                out.append((s.module, fused.state_dict()["state"]))
        return out

    def local_state(self) -> dict[str, Any]:
        """{key: this rank's part of the state (a ShardedTensor, or a replica's tensor)}."""
        return {
            f"{i}/{param}/{name}": value
            for i, (_, state) in enumerate(self._states())
            for param, values in state.items()
            for name, value in values.items()
            if torch.is_tensor(value)
        }

    def state_dict(self) -> dict[str, Any]:
        return dict(sorted(gather_full(self.local_state()).items()))  # a rank may hold none

    def load_state_dict(self, saved: dict[str, Any]) -> None:
        for i, (_, state) in enumerate(self._states()):
            for param, values in state.items():
                for name, value in values.items():
                    key = f"{i}/{param}/{name}"
                    if not torch.is_tensor(value):
                        continue
                    if key not in saved:
                        raise ValueError(f"the checkpoint has no fused optimizer state {key}")
                    there, here = list(saved[key].shape), list(value.size())
                    if there != here:  # else a larger state would load truncated, silently
                        raise ValueError(
                            f"the checkpoint's fused optimizer state {key} is {there}, this "
                            f"run's {here}: its tables were sharded otherwise (rowwise_adagrad "
                            "keeps a row state per column_wise shard); use the run's own "
                            "trainer.devices"
                        )
                    _scatter([value], [saved[key]])


class TorchRecOptimizer(MultiOptimizer):
    """The dense optimizers (stepped, scheduled) plus the fused tables' state (checkpointed) and
    the replicated (data-parallel) tables' optimizers: stepped with the dense ones, at a constant
    lr as the fused tables are (not in `optimizers`, which the lr schedule drives)."""

    def __init__(self, dense: MultiOptimizer, fused: FusedTables):
        super().__init__(dense.optimizers)
        self.fused = fused
        self.replicated = [s.replicated for s in fused.sharded if s.replicated is not None]
        # which tables each replicated optimizer trains: a resume must find the same ones
        self.replicated_names = [
            replicated_names(s.plan) for s in fused.sharded if s.replicated is not None
        ]

    def zero_grad(self, set_to_none: bool = True) -> None:
        super().zero_grad(set_to_none)
        for opt in self.replicated:
            opt.zero_grad(set_to_none=set_to_none)

    @torch.no_grad()
    def step(self, closure: Any = None) -> None:  # type: ignore[override]
        super().step()
        for opt in self.replicated:  # the gradients DDP averaged over the ranks in the backward
            opt.step()

    def state_dict(self) -> dict[str, Any]:
        # every rank holds the same replicated state: rank 0's is written, in last.pt also when
        # the tables are in DCP folders (a replicated table is small)
        replicated = {
            "replicated_tables": [opt.state_dict() for opt in self.replicated],
            "replicated_table_names": self.replicated_names,
        }
        if not self.fused.in_state:
            return {**super().state_dict(), **replicated}
        return {**super().state_dict(), "fused_tables": self.fused.state_dict(), **replicated}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if "fused_tables" not in state_dict and self.fused.in_state:
            raise ValueError("the checkpoint holds no fused table state (not a torchrec run)")
        replicated = state_dict.get("replicated_tables", [])
        names = state_dict.get("replicated_table_names")  # None: saved before names were
        if len(replicated) != len(self.replicated) or names not in (None, self.replicated_names):
            saved = names_text(names, len(replicated))
            here = names_text(self.replicated_names, len(self.replicated))
            raise ValueError(
                f"the checkpoint's data-parallel tables are {saved}, this run's {here}: the "
                "planner replicates other tables with this trainer.devices; resume with the "
                "run's own trainer.devices"
            )
        super().load_state_dict(state_dict)
        if self.fused.in_state:
            self.fused.load_state_dict(state_dict["fused_tables"])
        for opt, part in zip(self.replicated, replicated, strict=True):
            opt.load_state_dict(part)


def with_fused_tables(optimizer: MultiOptimizer, model: nn.Module) -> MultiOptimizer:
    sharded = getattr(model, "sharded_tables", None)
    if not sharded:
        return optimizer
    return TorchRecOptimizer(optimizer, FusedTables(sharded))


def shard_model(
    model: nn.Module, cfg: Any, device: torch.device, write_json: Any, resumed: str | None = None
) -> None:
    """With trainer.embedding_backend=torchrec: convert and shard `model`'s embedding layers in
    place, log the plan and write it (`write_json(SHARDING_PLAN_FILE, plan)`, the run dir's).
    `resumed`: the run dir a resume continues, whose recorded plan is kept for as many ranks."""
    if cfg.embedding_backend != "torchrec":
        return
    ensure_process_group(device)
    from mtlrec.training.torchrec_plan import recorded_tables

    plan_file = Path(resumed) / SHARDING_PLAN_FILE if resumed else None
    recorded = recorded_tables(plan_file, dist.get_world_size())
    convert_model(model)  # built with drawn_in_shards: converted already (experiment.build)
    with quiet_sharding():
        sharded = [shard_layer(layer, cfg, device, recorded) for layer in torchrec_layers(model)]
    model.__dict__["sharded_tables"] = sharded  # not a submodule: no parameters, no state
    plan = {name: spec for s in sharded for name, spec in s.plan.items()}
    for name, spec in plan.items():
        kind, ranks, kernel = spec["sharding_type"], spec["ranks"], spec["compute_kernel"]
        log.info("torchrec: %s %s on rank(s) %s (%s kernel)", name, kind, ranks, kernel)
    record = {"world_size": dist.get_world_size(), "sharding": cfg.sharding, "tables": plan}
    write_json(SHARDING_PLAN_FILE, record)
