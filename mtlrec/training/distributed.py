"""Data-parallel training with torch.distributed: rank context, process launch, collectives.

Two ways to run N ranks, one run dir either way (see docs/distributed.md):

* `mtlrec train trainer.devices=N` (one machine): the Hydra job's process spawns N workers
  (`torch.multiprocessing.start_processes`, TCP rendezvous on 127.0.0.1 and a free port); each
  worker runs `experiment.run` as rank r of N and the parent waits, forwards SIGINT/SIGTERM and
  re-raises the first failure once.
* `torchrun ... -m mtlrec train ... hydra.run.dir=DIR`: every rank is its own Hydra job with the
  same run dir; RANK / WORLD_SIZE / LOCAL_RANK come from the environment (`env://` rendezvous).

Rank 0 alone writes the run dir (logs, history, metrics, checkpoints). Backend: nccl on CUDA,
gloo on CPU. The model is wrapped in DistributedDataParallel, which averages gradients over ranks:

    g = 1/W * sum_r grad(mean loss over rank r's rows)

so with equal shards (b rows each) an unmasked task's gradient equals the single-process gradient of
a batch of W*b rows. A task with `where` (e.g. CVR on clicked rows) averages per-rank means over
different numbers of rows, which is not the global mean: the one reason a run with W ranks is close
to, not identical with, a single-process run with the same global batch (tests/test_distributed.py).

Data order: every rank draws the same global permutation (same generator seed) and step s uses the
same W*b rows as step s of a single process with batch W*b; rank r takes the r-th of W equal parts
(`torch.tensor_split`). Evaluation: rank r predicts a contiguous block of whole eval batches (the
same batches as a single process), the predictions are all-gathered (padded to the longest block)
and concatenated in rank order, i.e. the original row order: the AUC is the split's global AUC,
identical to a single-process evaluation of the same weights.
"""

from __future__ import annotations

import atexit
import contextlib
import datetime as dt
import logging
import math
import os
import signal
import socket
import sys
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from mtlrec.data.streaming import StreamingSplit
from mtlrec.errors import MtlrecError

log = logging.getLogger(__name__)

TIMEOUT_ENV = "MTLREC_DIST_TIMEOUT_S"  # collective / rendezvous timeout in seconds
DEFAULT_TIMEOUT_S = 600
FAULT_ENV = "MTLREC_DIST_FAULT"  # "RANK:STEP": that rank fails at that training step (tests)
FILE_FORMAT = "[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"  # conf/hydra/job_logging
# Balancers that build gradients with torch.autograd.grad (not .backward()): DDP's hooks never
# fire for them, so their gradients are averaged here after the balancer wrote them.
MANUAL_GRAD_BALANCERS = ("pcgrad", "gradnorm")


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
    init_method: str = "env://"

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


def should_spawn(cfg: Any) -> bool:
    """trainer.devices > 1 in a plain process: this process launches the ranks."""
    return requested_devices(cfg) > 1 and process_rank().launcher == "none"


def _timeout() -> dt.timedelta:
    raw = os.environ.get(TIMEOUT_ENV, str(DEFAULT_TIMEOUT_S))
    try:
        seconds = float(raw)
    except ValueError:
        raise MtlrecError(f"{TIMEOUT_ENV}={raw!r} is not a number of seconds") from None
    return dt.timedelta(seconds=seconds)


def setup(
    device: torch.device, cfg: Any, threads_chosen: bool, run_dir: Path | None = None
) -> torch.device:
    """Start the process group of a spawned / torchrun rank; returns the rank's device.

    nccl on CUDA (rank r uses cuda:LOCAL_RANK), gloo on CPU. A CPU rank whose thread count was not
    set (trainer.num_threads=null) gets cores // local ranks threads: N ranks each using every
    core oversubscribe the machine (docs/performance.md: up to ~26x slower).
    """
    global _CURRENT
    ctx = process_rank()
    if ctx.launcher == "none":
        return device
    devices = requested_devices(cfg)
    if ctx.launcher == "torchrun" and devices not in (1, ctx.local_world_size):
        raise MtlrecError(
            f"trainer.devices={devices} under torchrun, which started {ctx.local_world_size} "
            "rank(s) per node; leave trainer.devices=1 (torchrun's --nproc-per-node decides)"
        )
    if device.type == "cuda":
        if ctx.local_rank >= torch.cuda.device_count():
            raise MtlrecError(
                f"rank {ctx.rank} needs cuda:{ctx.local_rank} but only "
                f"{torch.cuda.device_count()} CUDA device(s) are visible; lower trainer.devices"
            )
        device = torch.device("cuda", ctx.local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        backend = "gloo"
        if not threads_chosen and ctx.local_world_size > 1:
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // ctx.local_world_size))
    if not dist.is_initialized():
        dist.init_process_group(
            backend,
            init_method=ctx.init_method,
            rank=ctx.rank,
            world_size=ctx.world_size,
            timeout=_timeout(),
        )
    _CURRENT = replace(ctx, backend=backend, device=str(device))
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
    global _CURRENT
    if dist.is_initialized():
        dist.destroy_process_group()
    _CURRENT = replace(_CURRENT, backend=None)


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


# -- logging ------------------------------------------------------------------------------------
class _OtherRankFilter(logging.Filter):
    """Ranks > 0 show only warnings of libraries (torch, ...): the run's own messages and errors
    reach the user once, through rank 0 or the launching process."""

    def filter(self, record: logging.LogRecord) -> bool:
        own = record.name == "mtlrec" or record.name.startswith("mtlrec.")
        return record.levelno == logging.WARNING and not own


def quiet_other_ranks(rank: int) -> None:
    """Under torchrun Hydra set up train.log + console logging on every rank: keep rank 0's only."""
    if rank == 0:
        return
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    _add_rank_console(rank)


def _add_rank_console(rank: int) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"[rank {rank}] %(message)s"))
    handler.addFilter(_OtherRankFilter())
    logging.getLogger().addHandler(handler)


def _worker_logging(rank: int, log_file: str | None) -> None:
    """A spawned worker starts with no logging config: rank 0 appends to the parent's train.log."""
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    if rank != 0:
        _add_rank_console(rank)
        return
    console = logging.StreamHandler(sys.stdout)
    console.setFormatter(logging.Formatter("%(message)s"))
    root.addHandler(console)
    if log_file:
        file = logging.FileHandler(log_file, mode="a")
        file.setFormatter(logging.Formatter(FILE_FORMAT))
        root.addHandler(file)


def _root_log_file() -> str | None:
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            return handler.baseFilename
    return None


# -- launch (trainer.devices=N) -------------------------------------------------------------------
def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RankFailed(RuntimeError):
    """A rank failed with an error that is not a user error (its traceback is in the message)."""


def _die_with_parent() -> None:
    """Linux: a worker gets SIGTERM when the launching process dies (no orphaned ranks)."""
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _worker(
    local_rank: int,
    world: int,
    port: int,
    target: Callable[[Any, str], float],
    config: dict,
    run_dir: str,
    results: Any,
    log_file: str | None,
) -> None:
    global _CURRENT
    # Own process group: a Ctrl-C in the terminal reaches the parent only, which forwards it once
    # to every rank (a rank that got it twice would stop at once instead of checkpointing).
    os.setpgrp()
    _die_with_parent()
    _worker_logging(local_rank, log_file)
    _CURRENT = RankContext(
        rank=local_rank,
        world_size=world,
        local_rank=local_rank,
        local_world_size=world,
        launcher="spawn",
        init_method=f"tcp://127.0.0.1:{port}",
    )
    from omegaconf import OmegaConf

    try:
        value = target(OmegaConf.create(config), run_dir)
        if local_rank == 0:
            results.put(("result", 0, value))
    except BaseException as e:  # noqa: BLE001 - every failure goes to the parent, once
        results.put(
            (
                "error",
                local_rank,
                type(e).__name__,
                isinstance(e, MtlrecError),
                str(e),
                traceback.format_exc()[-20_000:],  # a pipe holds ~64 KiB: never block on it
                int(getattr(e, "signum", 0) or 0),
            )
        )
        teardown()
        sys.exit(1)
    teardown()


@contextlib.contextmanager
def _forward_signals(pids: list[int]) -> Iterator[None]:
    """While the ranks run, SIGINT/SIGTERM to this process go to every rank (graceful stop)."""

    def forward(signum: int, frame: Any) -> None:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def spawn(target: Callable[[Any, str], float], cfg: Any, run_dir: str | Path) -> float:
    """Run `target(cfg, run_dir)` as ranks 0..N-1 (N = trainer.devices); rank 0's return value.

    The first failure stops all ranks (the others are terminated after a 5 s grace period) and is
    raised here once: a rank's MtlrecError as one MtlrecError line naming the rank, an
    interruption as TrainingInterrupted (exit 130/143), anything else as RankFailed with the
    rank's traceback. A rank killed by a signal is named with that signal.
    """
    import multiprocessing

    import torch.multiprocessing as tmp
    from omegaconf import OmegaConf

    from mtlrec.runs.run_dir import RunDir
    from mtlrec.training.signals import TrainingInterrupted

    world = requested_devices(cfg)
    config = OmegaConf.to_container(cfg, resolve=True)
    results = multiprocessing.get_context("spawn").SimpleQueue()
    port = free_port()
    log.info("data parallel: starting %d ranks (rendezvous 127.0.0.1:%d)", world, port)
    procs = tmp.start_processes(
        _worker,
        args=(world, port, target, config, str(run_dir), results, _root_log_file()),
        nprocs=world,
        join=False,
        start_method="spawn",
    )
    failure: Exception | None = None
    spawn_log = logging.getLogger("torch.multiprocessing.spawn")
    level = spawn_log.level
    spawn_log.setLevel(logging.ERROR)  # its "Terminating process ..." lines are noise here
    try:
        with _forward_signals(procs.pids()):
            while True:
                try:
                    if procs.join(grace_period=5):
                        break
                except (tmp.ProcessRaisedException, tmp.ProcessExitedException) as e:
                    failure = e
                    break
    finally:
        spawn_log.setLevel(level)
    value, errors = math.nan, []
    while not results.empty():
        item = results.get()
        if item[0] == "result":
            value = item[2]
        else:
            errors.append(item)
    if failure is None and not errors:
        return float(value)
    if errors:
        # The first user error if any (a peer's "connection closed" follows the real cause).
        _, rank, name, is_user, message, tb, signum = next((e for e in errors if e[3]), errors[0])
        text = f"rank {rank} of {world}: {message}"
    else:
        assert failure is not None
        rank = getattr(failure, "error_index", "?")
        name, is_user, tb, signum = "", False, "", 0
        text = f"rank {rank} of {world} died: {failure}"
    if name == "TrainingInterrupted":  # rank 0 recorded status=interrupted and its checkpoint
        raise TrainingInterrupted(text, signum or int(signal.SIGINT))
    # The root cause, also when rank 0 already recorded its own consequence of it (e.g. gloo's
    # "Connection closed by peer" after rank 1 died).
    RunDir(run_dir).update_metrics(status="failed", error=text)
    if is_user:
        raise MtlrecError(text)
    raise RankFailed(f"{text}\n{tb}".rstrip())


# -- collectives (no-ops in a single process) ---------------------------------------------------
def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum over ranks, in place (returns `t`)."""
    if current().active:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def any_rank(flag: bool) -> bool:
    """True on every rank when it is True on any rank (e.g. a stop request seen by one rank)."""
    ctx = current()
    if not ctx.active:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=ctx.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def any_rank_every(flag: bool, step: int, every: int) -> bool:
    """`any_rank` at every `every`-th step, False in between (the flag is looked at again later);
    a single process just returns the flag. A signal reaches every rank, so the ranks stop
    together within `every` steps instead of paying a collective and a GPU sync per step."""
    if not current().active:
        return flag
    return step % every == 0 and any_rank(flag)


def decide(flag: bool) -> bool:
    """Rank 0's decision, on every rank (early stopping)."""
    ctx = current()
    if not ctx.active:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=ctx.device)
    dist.broadcast(t, src=0)
    return bool(t.item() > 0)


def broadcast_state(module: nn.Module) -> None:
    """Copy rank 0's parameters and buffers of `module` to every rank (in place)."""
    if not current().active:
        return
    with torch.no_grad():
        for t in module.state_dict().values():
            if isinstance(t, torch.Tensor) and t.numel():
                dist.broadcast(t, src=0)


def sum_optional(t: torch.Tensor | None) -> torch.Tensor | None:
    """Sum of a tensor some ranks may not have (a rank with no eval rows has no gate sums)."""
    if not current().active:
        return t
    parts: list[Any] = [None] * current().world_size
    dist.all_gather_object(parts, None if t is None else t.cpu())
    present = [p for p in parts if p is not None]
    if not present:
        return None
    total = torch.stack(present).sum(0)
    return total.to(t.device) if t is not None else total


# -- sharding -----------------------------------------------------------------------------------
def shard(global_batch: torch.Tensor) -> torch.Tensor:
    """This rank's part of a global batch of row indices (W near-equal contiguous parts)."""
    ctx = current()
    if ctx.world_size == 1:
        return global_batch
    return torch.tensor_split(global_batch, ctx.world_size)[ctx.rank]


def eval_block(n: int, batch_size: int, rank: int | None = None, world: int | None = None):
    """Rows [lo, hi) this rank predicts: a contiguous block of whole eval batches of size
    `batch_size`, so every batch holds the same rows as in a single process."""
    ctx = current()
    rank = ctx.rank if rank is None else rank
    world = ctx.world_size if world is None else world
    batches = math.ceil(n / batch_size)
    lo, hi = batches * rank // world, batches * (rank + 1) // world
    return min(lo * batch_size, n), min(hi * batch_size, n)


def gather_rows(outputs: dict[str, torch.Tensor], n: int) -> dict[str, torch.Tensor]:
    """Each rank's block of rows -> the whole split, in row order (all_gather, padded)."""
    ctx = current()
    if not ctx.active or not outputs:
        return outputs
    names = list(outputs)
    local = torch.stack([outputs[k] for k in names])  # [K, rows of this rank]
    sizes = [torch.zeros(1, dtype=torch.long, device=local.device) for _ in range(ctx.world_size)]
    dist.all_gather(sizes, torch.tensor([local.shape[1]], device=local.device))
    longest = max(int(s.item()) for s in sizes)
    padded = torch.zeros(len(names), longest, dtype=local.dtype, device=local.device)
    padded[:, : local.shape[1]] = local
    parts = [torch.empty_like(padded) for _ in range(ctx.world_size)]
    dist.all_gather(parts, padded)
    whole = torch.cat([p[:, : int(s.item())] for p, s in zip(parts, sizes, strict=True)], dim=1)
    if whole.shape[1] != n:
        raise RuntimeError(f"gathered {whole.shape[1]} rows of predictions, expected {n}")
    return {k: whole[i] for i, k in enumerate(names)}


# -- training ------------------------------------------------------------------------------------
class GradSync:
    """Gradient averaging around DDP: the balancer's own parameters (e.g. uncertainty weights) and,
    for balancers that write gradients with torch.autograd.grad, the model's too."""

    def __init__(
        self,
        ddp: nn.parallel.DistributedDataParallel | None,
        model: nn.Module,
        balancer: nn.Module,
        manual: bool,
    ):
        self.ddp, self.manual = ddp, manual
        self.params = [p for p in balancer.parameters() if p.requires_grad]
        if manual:
            self.params += [p for p in model.parameters() if p.requires_grad]
        self.steps = 0
        fault = os.environ.get(FAULT_ENV, "")
        self.fault = tuple(int(x) for x in fault.split(":")) if fault else None

    def forward_context(self) -> contextlib.AbstractContextManager:
        if self.ddp is not None and self.manual:
            return self.ddp.no_sync()
        return contextlib.nullcontext()

    def after_backward(self) -> None:
        ctx = current()
        self.steps += 1
        if self.fault is not None and self.fault == (ctx.rank, self.steps):
            raise MtlrecError(
                f"{FAULT_ENV}: injected failure on rank {ctx.rank} at step {self.steps}"
            )
        if not ctx.active or not self.params:
            return
        # One flat all-reduce. A parameter without a gradient (the same on every rank: the graph
        # is the same) keeps None, so the optimizer skips it as it would in a single process.
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.params]
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat /= ctx.world_size
        offset = 0
        for p in self.params:
            k = p.numel()
            if p.grad is not None:
                p.grad.copy_(flat[offset : offset + k].view_as(p))
            offset += k


def data_parallel(
    model: nn.Module,
    forward: Callable,
    device: torch.device,
    balancer: nn.Module,
    balance_name: str,
    compile_model: bool,
) -> tuple[Callable, GradSync]:
    """(the training forward, its GradSync): DDP around the model once the process group is up."""
    if not current().active:
        return forward, GradSync(None, model, balancer, manual=False)
    ddp = nn.parallel.DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None
    )
    manual = balance_name in MANUAL_GRAD_BALANCERS
    train_forward = torch.compile(ddp) if compile_model else ddp
    return train_forward, GradSync(ddp, model, balancer, manual)


# -- streaming (dataset.streaming=true) -----------------------------------------------------------
class RankStream(StreamingSplit):
    """Rank r's share of a streamed training split: the row groups r, r+W, r+2W, ... of the file.

    Every rank reads only its own groups (in a generator-drawn order each epoch, then shuffled
    in the split's buffer as in one process). DDP needs the same number of steps on every rank,
    and the ranks' groups hold different numbers of rows, so an epoch has
    steps = min over ranks of floor(rows of the rank / b) full batches of b rows per rank; each
    rank's remaining rows (fewer than one row group + b) wait for a later epoch, whose group order
    and buffer shuffle put other rows last.
    """

    def __init__(self, split: StreamingSplit, batch_size: int, rank: int, world: int):
        import pyarrow.parquet as pq

        self.__dict__.update(split.__dict__)  # the same file and settings (not re-validated)
        meta = pq.ParquetFile(split.path).metadata
        if split.num_row_groups < world:
            raise MtlrecError(
                f"{split.path}: dataset.streaming with {world} ranks needs at least {world} "
                f"parquet row groups (ranks read different ones), the file has "
                f"{split.num_row_groups}; rewrite it with smaller row groups or set "
                "dataset.streaming=false"
            )
        group_rows = [meta.row_group(g).num_rows for g in range(split.num_row_groups)]
        rows = [sum(group_rows[r::world]) for r in range(world)]
        self.steps = min(rows) // batch_size
        if self.steps == 0:
            raise MtlrecError(
                f"{split.path}: with {world} ranks a rank streams only {min(rows)} rows, less "
                f"than one batch of trainer.batch_size={batch_size}; lower the batch size or set "
                "dataset.streaming=false"
            )
        self.rank, self.world, self.batch_size = rank, world, batch_size
        self.groups = list(range(rank, split.num_row_groups, world))
        self.rows_per_rank = rows

    def __len__(self) -> int:
        """Rows trained per epoch over all ranks (steps x b x W)."""
        return self.steps * self.batch_size * self.world

    def batches(self, global_batch: int, generator: torch.Generator) -> Iterator[Any]:
        """This rank's `steps` batches of b = global_batch / W rows."""
        b = global_batch // self.world
        order = [self.groups[i] for i in torch.randperm(len(self.groups), generator=generator)]
        held, rows, done = [], 0, 0
        chunks = self.chunks(order)
        try:
            for chunk in chunks:
                held.append(chunk)
                rows += chunk[0].shape[0]
                if rows < self.shuffle_buffer + b:
                    continue
                flush = self._flush(held, b, generator, final=False)
                while True:
                    try:
                        batch = next(flush)
                    except StopIteration as stop:
                        held, rows = stop.value
                        break
                    yield batch
                    done += 1
                    if done == self.steps:
                        return
            for batch in self._flush(held, b, generator, final=True):
                if batch.labels.shape[0] < b or done == self.steps:
                    return
                yield batch
                done += 1
        finally:
            chunks.close()  # stops the reader thread when the epoch ends before the file does


def shard_streaming(splits: dict[str, Any], batch_size: int) -> dict[str, Any]:
    """With several ranks, a streamed train split becomes this rank's RankStream."""
    ctx = current()
    train = splits.get("train")
    if ctx.world_size == 1 or not isinstance(train, StreamingSplit):
        return splits
    stream = RankStream(train, batch_size, ctx.rank, ctx.world_size)
    log.info(
        "data: rank %d streams row groups %s... (%s rows); %d steps of %d rows per rank and epoch",
        ctx.rank,
        stream.groups[:4],
        f"{stream.rows_per_rank[ctx.rank]:,}",
        stream.steps,
        batch_size,
    )
    return {**splits, "train": stream}


@contextlib.contextmanager
def main_first() -> Iterator[None]:
    """Rank 0 runs the block first (e.g. generates a dataset), the other ranks after it."""
    ctx = current()
    if ctx.active and not ctx.is_main:
        dist.barrier()
    yield
    if ctx.active and ctx.is_main:
        dist.barrier()
