"""Data-parallel training with torch.distributed (docs/distributed.md).

Two ways to run N ranks, one run dir either way:

* `mtlrec train trainer.devices=N` (one machine): the Hydra job's process spawns N workers that
  meet at a TCP store the launcher holds open (launch.py); each worker runs `experiment.run` as
  rank r of N and the parent waits, forwards SIGINT/SIGTERM and raises the first failure once.
* `torchrun ... -m mtlrec train ... hydra.run.dir=DIR`: every rank is its own Hydra job with the
  same run dir; RANK / WORLD_SIZE / LOCAL_RANK come from the environment (`env://` rendezvous).

Rank 0 alone writes the run dir. The modules, launcher apart from strategy:

    launch.py       should_spawn, spawn, the workers, signal forwarding, the rendezvous store
    context.py      RankContext, current, process_rank, setup/teardown, main_first,
                    check_resume_world
    collectives.py  all_reduce_sum, average_over_ranks, any_rank, decide, broadcast_state,
                    gather_rows, eval_block, shard, ...
    grad_sync.py    DDP around the model (data_parallel) and GradSync; a balancer with
                    `writes_grads` (PCGrad, GradNorm) averages its per-task gradients itself
    streaming.py    RankStream, shard_streaming (each rank streams its own row groups)

Data order: every rank draws the same global permutation and step s uses the same W*b rows as
step s of a single process with batch W*b; rank r takes the r-th of W equal parts (`shard`).
"""

from mtlrec.training.distributed.collectives import (
    all_reduce_sum,
    any_rank,
    any_rank_every,
    average_gradients,
    average_over_ranks,
    average_tensors,
    broadcast_state,
    decide,
    eval_block,
    gather_rows,
    lockstep_batches,
    shard,
    sum_optional,
)
from mtlrec.training.distributed.context import (
    DEFAULT_TIMEOUT_S,
    TIMEOUT_ENV,
    RankContext,
    check_resume_world,
    current,
    main_first,
    process_rank,
    requested_devices,
    setup,
    teardown,
    under_torchrun,
)
from mtlrec.training.distributed.grad_sync import FAULT_ENV, GradSync, data_parallel
from mtlrec.training.distributed.launch import RankFailed, should_spawn, spawn
from mtlrec.training.distributed.rank_logging import FILE_FORMAT, quiet_other_ranks
from mtlrec.training.distributed.streaming import RankStream, shard_streaming

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "FAULT_ENV",
    "FILE_FORMAT",
    "TIMEOUT_ENV",
    "GradSync",
    "RankContext",
    "RankFailed",
    "RankStream",
    "all_reduce_sum",
    "any_rank",
    "any_rank_every",
    "average_gradients",
    "average_tensors",
    "average_over_ranks",
    "broadcast_state",
    "check_resume_world",
    "current",
    "data_parallel",
    "decide",
    "eval_block",
    "lockstep_batches",
    "gather_rows",
    "main_first",
    "process_rank",
    "quiet_other_ranks",
    "requested_devices",
    "setup",
    "shard",
    "shard_streaming",
    "should_spawn",
    "spawn",
    "sum_optional",
    "teardown",
    "under_torchrun",
]
