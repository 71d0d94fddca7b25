"""Launching N ranks on one machine (`mtlrec train trainer.devices=N`).

The launching process opens a TCPStore on 127.0.0.1 with port 0 (the OS picks a free port and the
store keeps the socket open for the whole run, so parallel jobs on one machine cannot race for a
port), starts N workers (`torch.multiprocessing`, start method `spawn`) that join that store as
clients, forwards SIGINT/SIGTERM to them once, and waits. The first failing rank stops every rank
and is raised here once as RankFailed (a MtlrecError: the caller records it in the run dir; this
module writes no file).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import signal
import sys
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch.distributed as dist

from mtlrec.errors import MtlrecError
from mtlrec.training.distributed.context import (
    STORE_HOST,
    RankContext,
    process_rank,
    requested_devices,
    set_current,
    teardown,
    timeout,
)
from mtlrec.training.distributed.rank_logging import root_log_file, worker_logging

log = logging.getLogger(__name__)


class RankFailed(MtlrecError):
    """A rank of a spawned run failed. `text` is the one line to record and show
    ("rank 1 of 2: <its error>"); `user_error` says whether it was a MtlrecError (then the message
    is that one line), else the message carries the rank's traceback after it."""

    def __init__(self, text: str, user_error: bool, details: str = ""):
        super().__init__(text if user_error or not details else f"{text}\n{details}".rstrip())
        self.text, self.user_error, self.details = text, user_error, details


@dataclass(frozen=True)
class RankError:
    """What a worker sends the launcher about its failure (plain values: it crosses a pipe)."""

    rank: int
    name: str  # the exception's class name
    user_error: bool
    message: str
    details: str  # its traceback (tail)
    signum: int = 0


def should_spawn(cfg: Any) -> bool:
    """trainer.devices > 1 in a plain process: this process launches the ranks."""
    return requested_devices(cfg) > 1 and process_rank().launcher == "none"


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
    # Own process group: a Ctrl-C in the terminal reaches the parent only, which forwards it once
    # to every rank (a rank that got it twice would stop at once instead of checkpointing).
    os.setpgrp()
    _die_with_parent()
    worker_logging(local_rank, log_file)
    set_current(
        RankContext(
            rank=local_rank,
            world_size=world,
            local_rank=local_rank,
            local_world_size=world,
            launcher="spawn",
            store_port=port,
        )
    )
    from omegaconf import OmegaConf

    try:
        value = target(OmegaConf.create(config), run_dir)
        if local_rank == 0:
            results.put(("result", value))
    except BaseException as e:  # noqa: BLE001 - every failure goes to the parent, once
        error = RankError(
            rank=local_rank,
            name=type(e).__name__,
            user_error=isinstance(e, MtlrecError),
            message=str(e),
            details=traceback.format_exc()[-20_000:],  # a pipe holds ~64 KiB: never block
            signum=int(getattr(e, "signum", 0) or 0),
        )
        results.put(("error", error))
        teardown()
        _leave(1)
    teardown()
    _leave(0)


def _leave(code: int) -> None:
    """End a rank once its result is sent: Python's exit handlers and log/stdout flushes run,
    then os._exit skips the C++ static destructors, where a library thread still joinable at
    exit (seen: a rank aborting with "terminate called without an active exception" after
    finishing its work) would turn a finished rank into a SIGABRT."""
    import atexit

    atexit._run_exitfuncs()
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


@contextlib.contextmanager
def _forward_signals(pids: list[int]) -> Iterator[None]:
    """While the ranks run, SIGINT/SIGTERM to this process go to every rank (graceful stop);
    the dispositions found are restored afterwards, whatever they were."""

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


def open_store(world: int) -> dist.TCPStore:
    """The rendezvous store, listening on a port the OS chose, held open until the run ends."""
    return dist.TCPStore(
        STORE_HOST, 0, world + 1, is_master=True, timeout=timeout(), wait_for_workers=False
    )


def _wait(procs: Any) -> Exception | None:
    """Join the workers; the first abnormal exit (the others are then terminated, 5 s grace)."""
    import torch.multiprocessing as tmp

    spawn_log = logging.getLogger("torch.multiprocessing.spawn")
    level = spawn_log.level
    spawn_log.setLevel(logging.ERROR)  # its "Terminating process ..." lines are noise here
    try:
        with _forward_signals(procs.pids()):
            while True:
                try:
                    if procs.join(grace_period=5):
                        return None
                except (tmp.ProcessRaisedException, tmp.ProcessExitedException) as e:
                    return e
    finally:
        spawn_log.setLevel(level)


def spawn(target: Callable[[Any, str], float], cfg: Any, run_dir: str | Path) -> float:
    """Run `target(cfg, run_dir)` as ranks 0..N-1 (N = trainer.devices); rank 0's return value.

    The first failure stops all ranks and is raised here once: an interruption as
    TrainingInterrupted (exit 130/143; rank 0 recorded it), anything else as RankFailed naming
    the rank (one line for a rank's MtlrecError, else with the rank's traceback). A rank killed
    by a signal is named with that signal. The caller records a RankFailed in the run dir.
    """
    import multiprocessing

    import torch.multiprocessing as tmp
    from omegaconf import OmegaConf

    world = requested_devices(cfg)
    config = OmegaConf.to_container(cfg, resolve=True)
    results = multiprocessing.get_context("spawn").SimpleQueue()
    store = open_store(world)
    log.info("data parallel: starting %d ranks (rendezvous %s:%d)", world, STORE_HOST, store.port)
    try:
        procs = tmp.start_processes(
            _worker,
            args=(world, store.port, target, config, str(run_dir), results, root_log_file()),
            nprocs=world,
            join=False,
            start_method="spawn",
        )
        failure = _wait(procs)
    finally:
        del store  # closes the listening socket once every rank is gone
    value, errors = math.nan, []
    while not results.empty():
        kind, item = results.get()
        if kind == "result":
            value = item
        else:
            errors.append(item)
    if failure is None and not errors:
        return float(value)
    raise _failure(world, errors, failure)


def _failure(world: int, errors: list[RankError], failure: Exception | None) -> Exception:
    from mtlrec.training.signals import TrainingInterrupted

    if not errors:
        rank = getattr(failure, "error_index", "?")
        return RankFailed(f"rank {rank} of {world} died: {failure}", user_error=False)
    # The first user error if any (a peer's "connection closed" follows the real cause).
    error = next((e for e in errors if e.user_error), errors[0])
    text = f"rank {error.rank} of {world}: {error.message}"
    if error.name == "TrainingInterrupted":  # rank 0 recorded status=interrupted, its checkpoint
        return TrainingInterrupted(text, error.signum or int(signal.SIGINT))
    return RankFailed(text, error.user_error, "" if error.user_error else error.details)
