"""`mtlrec train resume=SWEEP_DIR`: finish a sweep (Hydra cannot resume one).

The sweep's jobs are listed again from its multirun.yaml (the sweep's overrides and
hydra.sweeper.params, expanded as Hydra's BasicSweeper does, in the same order: job k is
SWEEP_DIR/k). Each job, one after another, in a process of its own:

* completed                      -> skipped;
* a checkpoint (interrupted, failed or killed) -> `mtlrec train resume=SWEEP_DIR/k`;
* no checkpoint, or never started -> started in SWEEP_DIR/k with the job's overrides.

One report line per job at the end; exit 0 when every job completed, else 1 (130/143 when a
signal stopped it: the remaining jobs are named as not run).
"""

from __future__ import annotations

import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from mtlrec.commands import ERROR, OK
from mtlrec.commands.resume_args import _key, _resume_value, config_sources
from mtlrec.runs.records import read_info
from mtlrec.runs.resume import has_checkpoint

BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"
# Overrides of the sweep that make no sense for one of its jobs run on its own.
SWEEP_ONLY = ("hydra.sweep.dir", "hydra.sweep.subdir", "hydra.mode", "hydra.run.dir", "resume")


@dataclass
class Job:
    number: int  # Hydra's hydra.job.num
    total: int
    dir: Path
    overrides: list[str]
    axes: str  # the overrides that differ between the sweep's jobs: "seed=2"
    outcome: str = "not run"

    @property
    def name(self) -> str:
        return f"sweep job {self.number + 1}/{self.total} ({self.axes})"


def _load(sweep_dir: Path) -> dict:
    import yaml

    data = yaml.safe_load((sweep_dir / "multirun.yaml").read_text()) or {}
    return data.get("hydra") or {}


def list_jobs(sweep_dir: Path) -> list[Job]:
    """The jobs of the sweep in SWEEP_DIR, as its BasicSweeper ran them."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    hydra = _load(sweep_dir)
    sweeper = hydra.get("sweeper") or {}
    if sweeper.get("_target_") != BASIC_SWEEPER:
        raise ValueError(
            f"resume={sweep_dir}: a sweep of {sweeper.get('_target_')} cannot be resumed this "
            "way (only grid sweeps, `-m key=a,b`); resume its jobs one by one with resume=DIR/N"
        )
    subdir = str((hydra.get("sweep") or {}).get("subdir"))
    if subdir != "${hydra.job.num}":
        raise ValueError(
            f"resume={sweep_dir}: its jobs are in hydra.sweep.subdir={subdir}, not numbered "
            "dirs; resume them one by one with resume=DIR"
        )
    params = [f"{k}={v}" for k, v in (sweeper.get("params") or {}).items()]
    task = [str(o) for o in (hydra.get("overrides") or {}).get("task") or []]
    parsed = OverridesParser.create().parse_overrides([*params, *task])
    lists = [job for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]
    lists = [[o for o in job if _key(o) not in SWEEP_ONLY] for job in lists]
    varying = [k for k in _keys(lists) if len({_value(j, k) for j in lists}) > 1]
    return [
        Job(
            number=i,
            total=len(lists),
            dir=sweep_dir / str(i),
            overrides=job,
            axes=" ".join(f"{k}={_value(job, k)}" for k in varying) or "the only job",
        )
        for i, job in enumerate(lists)
    ]


def _keys(jobs: list[list[str]]) -> list[str]:
    seen: dict[str, None] = {}
    for job in jobs:
        for o in job:
            seen.setdefault(_key(o))
    return list(seen)


def _value(job: list[str], key: str) -> str | None:
    return next((o.split("=", 1)[1] for o in job if _key(o) == key), None)


def _command(job: Job, sweep_dir: Path) -> tuple[str, list[str]]:
    """What to do with the job: ("skip", []) or (verb, the `mtlrec train` arguments)."""
    status = read_info(job.dir).get("status")
    if status == "completed":
        return "skip", []
    if has_checkpoint(job.dir):
        return "resumed", [f"resume={job.dir}"]
    sources = config_sources(sweep_dir / "multirun.yaml", [])
    return "started", [*sources, *job.overrides, f"hydra.run.dir={job.dir}"]


class _Forward:
    """While a job runs: SIGINT/SIGTERM go on to it, and no further job starts."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen | None = None
        self.signum: int | None = None

    def __call__(self, signum: int, frame: object) -> None:
        self.signum = signum
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signum)


def resume_sweep(args: list[str]) -> int:
    sweep_dir = Path(_resume_value(args) or "").expanduser().absolute()
    mine = [a for a in args if _key(a) != "resume"]
    if mine:
        raise ValueError(
            f"resume={sweep_dir} resumes a sweep as it was: give no other arguments ({mine})"
        )
    jobs = list_jobs(sweep_dir)
    forward = _Forward()
    old = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        for job in jobs:
            if forward.signum is not None:
                break
            _run_job(job, sweep_dir, forward)
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
    return _report(sweep_dir, jobs, forward.signum)


def _run_job(job: Job, sweep_dir: Path, forward: _Forward) -> None:
    verb, argv = _command(job, sweep_dir)
    if verb == "skip":
        job.outcome = "completed before, skipped"
        print(f"{job.name}: {job.dir} {job.outcome}", file=sys.stderr, flush=True)
        return
    doing = {"resumed": "resuming", "started": "starting"}[verb]
    print(f"{job.name}: {doing} {job.dir}", file=sys.stderr, flush=True)
    forward.proc = subprocess.Popen([sys.executable, "-m", "mtlrec", "train", *argv])
    code = forward.proc.wait()
    forward.proc = None
    info = read_info(job.dir)
    status = info.get("status") or "not started"
    if code == 0 and status == "completed":
        job.outcome = f"{verb}, completed"
    else:
        why = info.get("error") or f"exit status {code}"
        job.outcome = f"{verb}, {status if status != 'running' else 'failed'}: {why}"


def _report(sweep_dir: Path, jobs: list[Job], signum: int | None) -> int:
    done = sum(j.outcome.endswith("completed") or j.outcome.startswith("completed") for j in jobs)
    print(f"sweep {sweep_dir}: {done} of {len(jobs)} jobs completed", file=sys.stderr)
    for job in jobs:
        print(f"  {job.name} {job.dir}: {job.outcome}", file=sys.stderr)
    if signum is not None:
        print(
            f"stopped by {signal.Signals(signum).name}: continue with: mtlrec train "
            f"resume={sweep_dir}",
            file=sys.stderr,
        )
        return 128 + signum
    if done < len(jobs):
        print(f"continue with: mtlrec train resume={sweep_dir}", file=sys.stderr)
        return ERROR
    return OK
