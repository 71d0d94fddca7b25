"""Who this process is (rank, world, launcher) and the process group's life cycle.

A process is one of: a single process (launcher "none"), a worker spawned by
`mtlrec train trainer.devices=N` (launcher "spawn", rendezvous through the launcher's TCP store),
or a torchrun rank (launcher "torchrun", RANK / WORLD_SIZE / LOCAL_RANK from the environment).
Backend: nccl on CUDA (rank r uses cuda:LOCAL_RANK), gloo on CPU.
"""

from __future__ import annotations

import atexit
import contextlib
import datetime as dt
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from mtlrec.errors import MtlrecError
from mtlrec.training.distributed.rank_logging import quiet_other_ranks

log = logging.getLogger(__name__)

TIMEOUT_ENV = "MTLREC_DIST_TIMEOUT_S"  # collective / rendezvous timeout in seconds
DEFAULT_TIMEOUT_S = 600
STORE_HOST = "127.0.0.1"


@dataclass(frozen=True)
class RankContext:
    """Who this process is. `active` once the process group is up (also with a single rank)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    launcher: str = "none"  # none | spawn | torchrun
    backend: str | None = None
    device: str = "cpu"  # where collectives' tensors live (cuda:i for nccl)
    init_method: str = "env://"  # torchrun; spawned workers meet at the launcher's store instead
    store_port: int | None = None  # the launcher's TCPStore on STORE_HOST (launcher "spawn")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.backend is not None

    def describe(self, per_rank_batch: int) -> dict[str, Any]:
        return {
            "launcher": self.launcher,
            "backend": self.backend,
            "world_size": self.world_size,
            "per_rank_batch_size": per_rank_batch,
            "effective_batch_size": per_rank_batch * self.world_size,
        }


_CURRENT = RankContext()


def current() -> RankContext:
    return _CURRENT


def set_current(ctx: RankContext) -> None:
    """Set by a spawned worker before it runs the target (see launch.py)."""
    global _CURRENT
    _CURRENT = ctx


def under_torchrun() -> bool:
    return all(k in os.environ for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))


def process_rank() -> RankContext:
    """This process's rank before the process group exists (spawned worker, torchrun or single)."""
    global _CURRENT
    if _CURRENT.launcher == "none" and under_torchrun():
        world = int(os.environ["WORLD_SIZE"])
        _CURRENT = RankContext(
            rank=int(os.environ["RANK"]),
            world_size=world,
            local_rank=int(os.environ["LOCAL_RANK"]),
            local_world_size=int(os.environ.get("LOCAL_WORLD_SIZE", world)),
            launcher="torchrun",
        )
    return _CURRENT


def requested_devices(cfg: Any) -> int:
    value = cfg.get("trainer", {}).get("devices", 1)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise MtlrecError(f"trainer.devices must be an integer >= 1, got {value!r}")
    return value


def timeout() -> dt.timedelta:
    raw = os.environ.get(TIMEOUT_ENV, str(DEFAULT_TIMEOUT_S))
    try:
        seconds = float(raw)
    except ValueError:
        raise MtlrecError(f"{TIMEOUT_ENV}={raw!r} is not a number of seconds") from None
    return dt.timedelta(seconds=seconds)


def _rank_device(device: torch.device, ctx: RankContext, threads_chosen: bool) -> torch.device:
    """cuda:LOCAL_RANK on GPUs; on CPU, cores // local ranks threads unless trainer.num_threads
    was set (N ranks each using every core oversubscribe the machine, docs/performance.md)."""
    if device.type == "cuda":
        if ctx.local_rank >= torch.cuda.device_count():
            raise MtlrecError(
                f"rank {ctx.rank} needs cuda:{ctx.local_rank} but only "
                f"{torch.cuda.device_count()} CUDA device(s) are visible; lower trainer.devices"
            )
        device = torch.device("cuda", ctx.local_rank)
        torch.cuda.set_device(device)
    elif not threads_chosen and ctx.local_world_size > 1:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // ctx.local_world_size))
    return device


def _init_group(backend: str, ctx: RankContext) -> None:
    if dist.is_initialized():
        return
    if ctx.store_port is None:  # torchrun: env:// rendezvous
        dist.init_process_group(
            backend,
            init_method=ctx.init_method,
            rank=ctx.rank,
            world_size=ctx.world_size,
            timeout=timeout(),
        )
        return
    # Spawned worker: a client of the store the launcher holds open (no port to race for).
    store = dist.TCPStore(
        STORE_HOST, ctx.store_port, ctx.world_size, is_master=False, timeout=timeout()
    )
    dist.init_process_group(
        backend, store=store, rank=ctx.rank, world_size=ctx.world_size, timeout=timeout()
    )


def setup(
    device: torch.device, cfg: Any, threads_chosen: bool, run_dir: Path | None = None
) -> torch.device:
    """Start the process group of a spawned / torchrun rank; returns the rank's device."""
    ctx = process_rank()
    if ctx.launcher == "none":
        return device
    devices = requested_devices(cfg)
    if ctx.launcher == "torchrun" and devices not in (1, ctx.local_world_size):
        raise MtlrecError(
            f"trainer.devices={devices} under torchrun, which started {ctx.local_world_size} "
            "rank(s) per node; leave trainer.devices=1 (torchrun's --nproc-per-node decides)"
        )
    device = _rank_device(device, ctx, threads_chosen)
    backend = "nccl" if device.type == "cuda" else "gloo"
    _init_group(backend, ctx)
    set_current(replace(ctx, backend=backend, device=str(device)))
    if ctx.launcher == "torchrun":
        quiet_other_ranks(ctx.rank)
        atexit.register(teardown)
        _check_same_run_dir(run_dir)
    return device


def _check_same_run_dir(run_dir: Path | None) -> None:
    """torchrun starts N Hydra jobs: with the default timestamped hydra.run.dir each would get
    its own dir, so every rank must be given the same one."""
    if run_dir is None:
        return
    dirs: list[Any] = [None] * current().world_size
    dist.all_gather_object(dirs, str(Path(run_dir).resolve()))
    if len(set(dirs)) > 1:
        raise MtlrecError(
            f"the {len(dirs)} torchrun ranks got different run dirs ({dirs[0]}, ...); give every "
            "rank the same one: add hydra.run.dir=DIR to the command (on a shared file system "
            "for several nodes)"
        )


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
    set_current(replace(current(), backend=None))


def check_resume_world(train_state: dict, path: Path) -> None:
    """A mid-epoch checkpoint holds a step of W*b-row global batches: only W ranks continue it."""
    saved, now = int(train_state.get("world_size", 1)), current().world_size
    if train_state.get("step") is not None and saved != now:
        raise MtlrecError(
            f"{path}: written mid-epoch (epoch {train_state['epoch']} step {train_state['step']}) "
            f"by {saved} rank(s); resume it with trainer.devices={saved} (a different number of "
            "ranks can only continue from an epoch-end checkpoint)"
        )
    if saved != now:
        log.warning(
            "resuming a run of %d rank(s) with %d: the effective batch size changes from the "
            "next epoch on",
            saved,
            now,
        )


@contextlib.contextmanager
def main_first() -> Iterator[None]:
    """Rank 0 runs the block first (e.g. generates a dataset), the other ranks after it."""
    ctx = current()
    if ctx.active and not ctx.is_main:
        dist.barrier()
    yield
    if ctx.active and ctx.is_main:
        dist.barrier()
