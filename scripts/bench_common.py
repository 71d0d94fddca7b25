"""Helpers the benchmark scripts share: fixed threads, timing, peak memory, ratio tables.

Import it from a script in scripts/ (scripts/ is sys.path[0] when a script runs):

    from bench_common import peak_rss_mib, thread_env, timed

It imports neither torch nor mtlrec at load time: bench.py's workers also run it in the peers'
own venvs, where mtlrec is not installed.
"""

from __future__ import annotations

import os
import resource
import statistics
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

ROOT = Path(__file__).resolve().parents[1]
T = TypeVar("T")


def peak_rss_mib() -> float:
    """This process's peak RSS: VmHWM of /proc/self/status (ru_maxrss would also count the
    high-water mark inherited from the parent process across fork + exec)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mib() -> float:
    """This process's resident set size now (for sampling memory over a run)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def thread_env(threads: int, wait_policy: str = "PASSIVE", **extra: str) -> dict[str, str]:
    """The environment of a child process pinned to `threads` OpenMP/MKL threads. PASSIVE: an
    idle OpenMP thread sleeps instead of spinning on a core other jobs need (docs/performance.md)."""
    return {
        **os.environ,
        "OMP_NUM_THREADS": str(threads),
        "MKL_NUM_THREADS": str(threads),
        "OMP_WAIT_POLICY": wait_policy,
        **extra,
    }


def pin_threads(threads: int) -> None:
    """torch's intra-op threads in this process (the env of thread_env sets OpenMP's)."""
    import torch

    torch.set_num_threads(threads)


def timed(fn: Callable[[], T], repeats: int = 3) -> tuple[float, float, T]:
    """(median wall seconds, median process-CPU seconds, last result) of `repeats` calls of fn().
    CPU time besides wall time: on a shared machine the wall clock also counts waiting for a core."""
    walls, cpus = [], []
    result: Any = None
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        result = fn()
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    return statistics.median(walls), statistics.median(cpus), result


class EpochCpu(list[float]):
    """Process-CPU seconds per training epoch, and the process's CPU time when the first began."""

    first_start: float | None = None


@contextmanager
def train_epoch_cpu() -> Iterator[EpochCpu]:
    """The process-CPU seconds of each mtlrec training epoch run inside the block (one entry per
    Trainer.train_epoch call), measured by wrapping the method for the block's duration."""
    from mtlrec.training.trainer import Trainer

    seconds = EpochCpu()
    plain_epoch = Trainer.train_epoch

    def timed_epoch(self: Trainer, *args: Any, **kwargs: Any) -> Any:
        c0 = time.process_time()
        if seconds.first_start is None:
            seconds.first_start = c0
        row = plain_epoch(self, *args, **kwargs)
        seconds.append(time.process_time() - c0)
        return row

    Trainer.train_epoch = timed_epoch  # type: ignore[method-assign]
    try:
        yield seconds
    finally:
        Trainer.train_epoch = plain_epoch  # type: ignore[method-assign]


def ratio_table(
    head: Sequence[str], rows: Mapping[str, float], base: str, fmt: str = "{:,.0f}"
) -> str:
    """A markdown table `| name | value | vs base |`: each value and its ratio to rows[base],
    measured in the same run (ratios move much less than absolute numbers on a shared CPU)."""
    lines = ["| " + " | ".join(head) + " |", "| --- | ---: | ---: |"]
    lines += [
        f"| {name} | {fmt.format(value)} | {value / rows[base]:.2f}x |"
        for name, value in rows.items()
    ]
    return "\n".join(lines)
