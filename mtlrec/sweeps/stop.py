"""SIGTERM to the process of a parallel (joblib) sweep: stop every job, leave no process behind.

joblib's loky workers are processes of their own: a SIGTERM sent to the sweep's process alone
(`kill PID`, a job scheduler, systemd) used to end it and leave the workers training on, with
loky's helper processes around them. `install(...)` (called by SweepReport.on_multirun_start
for the joblib launcher) replaces that with:

1. SIGTERM to each worker: a job that trains stops at its next step, writes its resumable
   checkpoint and records itself `interrupted` (as a single run would);
2. up to `GRACE_SECONDS` for the running jobs to record that, then SIGKILL to whatever process
   of the sweep is left (idle workers, loky's resource tracker);
3. the sweep report on stderr: what completed, what was interrupted (with the resume command),
   how many jobs never started; exit status 128 + signal (143 for SIGTERM).

Linux only for the process tree (/proc); elsewhere the workers get the signal and nothing more.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from mtlrec.runs import lock
from mtlrec.runs.records import METRICS_FILE, natural_key, read_info

GRACE_SECONDS = 30.0


def sweep_jobs(sweep_dir: Path) -> list[tuple[Path, dict]]:
    """(job dir, metrics.json) of every job dir under a sweep dir, in job order."""
    jobs = [(m.parent, read_info(m.parent)) for m in Path(sweep_dir).rglob(METRICS_FILE)]
    return sorted(jobs, key=lambda item: natural_key(item[0].relative_to(sweep_dir)))


def children(pid: int) -> dict[int, int]:
    """{child pid: parent pid} of every live descendant of `pid` (from /proc)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir() if Path("/proc").is_dir() else ():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()  # after "(comm)", which may hold spaces
        if fields[0] != "Z":  # zombies have exited already
            parents[int(entry.name)] = int(fields[1])
    tree: dict[int, int] = {}
    frontier = [pid]
    while frontier:
        parent = frontier.pop()
        for child, ppid in parents.items():
            if ppid == parent and child not in tree:
                tree[child] = parent
                frontier.append(child)
    return tree


def total_jobs(task_overrides: list[str]) -> int | None:
    """How many jobs the basic sweeper makes of these overrides (None when it cannot tell)."""
    try:
        from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
        from hydra.core.override_parser.overrides_parser import OverridesParser

        parsed = OverridesParser.create().parse_overrides(list(task_overrides))
        return sum(len(batch) for batch in BasicSweeper.split_arguments(parsed, None))
    except Exception:
        return None


def _job_states(sweep_dir: Path, since: float) -> list[tuple[Path, str]]:
    return [
        (path, str(metrics.get("status", "unknown")))
        for path, metrics in sweep_jobs(sweep_dir)
        if (path / METRICS_FILE).stat().st_mtime >= since
    ]


def report(sweep_dir: Path, since: float, total: int | None, signame: str) -> str:
    """The lines printed when the sweep was stopped."""
    states = _job_states(sweep_dir, since)
    done = [p for p, s in states if s == "completed"]
    stopped = [(p, s) for p, s in states if s != "completed"]
    started = f" of {total}" if total is not None else ""
    lines = [
        f"mtlrec train: sweep stopped by {signame}: {sweep_dir}: {len(done)}{started} job(s) "
        "completed"
    ]
    lines += [f"  {p}: {s}; continue with: mtlrec train resume={p}" for p, s in stopped]
    if total is not None and total > len(states):
        lines.append(f"  {total - len(states)} job(s) were not started")
    return "\n".join(lines)


def _wait_for_jobs(sweep_dir: Path, since: float, workers: list[int], grace: float) -> None:
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        running = [p for p, s in _job_states(sweep_dir, since) if s == "running"]
        alive = [w for w in workers if w in children(os.getpid())]
        if not running or not alive:
            return
        time.sleep(0.2)


def _kill_all(tree: dict[int, int]) -> None:
    for pid in tree:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    for pid in tree:  # reap our own children so none is left a zombie
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)


def stop_sweep(signum: int, sweep_dir: Path, since: float, total: int | None, grace: float) -> None:
    """Steps 1-3 of the module docstring; never returns."""
    signal.signal(signum, signal.SIG_IGN)  # a second SIGTERM while we wait changes nothing
    me = os.getpid()
    workers = [pid for pid, parent in children(me).items() if parent == me]
    for pid in workers:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    _wait_for_jobs(sweep_dir, since, workers, grace)
    _kill_all(children(me))
    name = signal.Signals(signum).name
    print(report(sweep_dir, since, total, name), file=sys.stderr, flush=True)
    sys.stdout.flush()
    lock._release_all()
    os._exit(128 + signum)  # joblib's own shutdown would wait on the workers we just stopped


def install(config: Any, since: float, grace: float = GRACE_SECONDS) -> None:
    """Handle SIGTERM in the sweep's process (not in the jobs: they are other processes)."""
    from omegaconf import OmegaConf

    sweep_dir = Path(str(config.hydra.sweep.dir))
    task = OmegaConf.select(config, "hydra.overrides.task", default=[]) or []
    total = total_jobs([str(o) for o in task])
    signal.signal(
        signal.SIGTERM,
        lambda signum, frame: stop_sweep(signum, sweep_dir, since, total, grace),
    )
