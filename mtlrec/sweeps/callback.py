"""Sweeps: failed jobs that do not stop the sweep, an end-of-sweep report, CPU threads per job.

Hydra's BasicSweeper runs a batch of jobs and then re-raises the first failure, so a sweep ends
with one traceback and no word on the other jobs. `SweepReport` (registered in conf/train.yaml's
hydra.callbacks) changes that for multiruns:

* `on_job_end` (runs inside the job's process, whatever the launcher): a failed job is recorded in
  its own run dir (`metrics.json` status=failed + error, written by `experiment.run`, or here when
  the job failed before that) and its traceback goes to the job's log. Under the BasicSweeper the
  job's result is then turned into a completed one returning NaN, so the remaining batches still
  run. Other sweepers (Optuna) keep the failure: they handle failed trials themselves
  (`hydra.sweeper.max_failure_rate`).
* `on_multirun_start` with the joblib launcher: SIGTERM to the sweep's process stops every
  worker, kills loky's helpers and prints the report (sweeps/stop.py).
* `on_multirun_end` (the sweep's own process, after the last job): reads the job dirs on disk and,
  when any job of this sweep did not complete, prints one line per such job (dir, status, error)
  and exits with status 1.

`job_thread_share()` gives each job of a parallel local sweep its share of the cores:
threads = cores // parallel jobs (at least 1). With OpenMP's busy-waiting threads, two jobs with
2 threads each on 2 cores can run ~26x slower than one job (see docs/sweeps.md).
"""

from __future__ import annotations

import atexit
import logging
import math
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from mtlrec.errors import MtlrecError
from mtlrec.runs.records import METRICS_FILE, read_info
from mtlrec.sweeps.stop import sweep_jobs

log = logging.getLogger("mtlrec")

BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"
BASIC_LAUNCHER = "hydra._internal.core_plugins.basic_launcher.BasicLauncher"


SWEEP_JOBS_ENV = "MTLREC_SWEEP_JOBS"


def grid_size(config: DictConfig) -> int | None:
    """How many jobs a BasicSweeper sweep runs (None for other sweepers)."""
    if str(OmegaConf.select(config, "hydra.sweeper._target_", default="")) != BASIC_SWEEPER:
        return None
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    params = OmegaConf.select(config, "hydra.sweeper.params", default=None) or {}
    given = [f"{k}={v}" for k, v in params.items()]
    given += [str(o) for o in OmegaConf.select(config, "hydra.overrides.task", default=None) or []]
    try:
        parsed = OverridesParser.create().parse_overrides(given)
        return sum(len(b) for b in BasicSweeper.split_arguments(parsed, None))
    except Exception:  # left to Hydra, which reports it itself
        return None


def _is_multirun(config: DictConfig) -> bool:
    return str(OmegaConf.select(config, "hydra.mode", default="")) == "RunMode.MULTIRUN"


def _is_interrupt(exc: BaseException) -> bool:
    from mtlrec.training.signals import TrainingInterrupted

    return isinstance(exc, (TrainingInterrupted, KeyboardInterrupt))


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, MtlrecError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


class SweepReport(Callback):
    """Keeps a sweep going past failed jobs and names every failed job at the end."""

    def __init__(self) -> None:
        self.started = 0.0
        self.reported = False
        self.sweep_dir = Path()
        self.jobs_env: str | None = None  # MTLREC_SWEEP_JOBS before this sweep set it

    def _restore_jobs_env(self) -> None:
        """Put MTLREC_SWEEP_JOBS back as it was before the sweep: a process that goes on after
        its sweep (a test session, a notebook) must not hand this sweep's count to later runs
        and their subprocesses."""
        if self.jobs_env is None:
            os.environ.pop(SWEEP_JOBS_ENV, None)
        else:
            os.environ[SWEEP_JOBS_ENV] = self.jobs_env

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        # Job dirs written before this sweep started (a reused hydra.sweep.dir) are not reported.
        self.started = time.time() - 1.0
        self.reported = False
        total = grid_size(config)
        self.jobs_env = os.environ.get(SWEEP_JOBS_ENV)
        if total is not None:
            os.environ[SWEEP_JOBS_ENV] = str(total)  # the jobs' processes inherit it
        launcher = str(OmegaConf.select(config, "hydra.launcher._target_", default=""))
        if launcher == BASIC_LAUNCHER:
            # A job interrupted by a signal may leave through SystemExit (train.py exits 130/143),
            # which Hydra does not hand to on_job_end: say it when the process ends.
            self.sweep_dir = Path(str(config.hydra.sweep.dir))
            atexit.register(self._stopped_line)
        if "joblib" in launcher.lower():
            from mtlrec.sweeps import stop as sweep_stop  # only parallel sweeps need it (start-up)

            sweep_stop.install(config, self.started)  # SIGTERM stops the workers too

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        """`sweep job 2/3 (.../1): seed=2`: which job of how many (in the job's own process and
        log; the total is known for grid sweeps, MTLREC_SWEEP_JOBS set by on_multirun_start)."""
        if not _is_multirun(config):
            return
        num = int(OmegaConf.select(config, "hydra.job.num", default=0))
        total = os.environ.get(SWEEP_JOBS_ENV)
        task = OmegaConf.select(config, "hydra.overrides.task", default=None) or []
        overrides = " ".join(str(o) for o in task)
        of = f"/{total}" if total else ""
        where = OmegaConf.select(config, "hydra.runtime.output_dir", default="?")
        log.info("sweep job %d%s (%s): %s", num + 1, of, where, overrides)

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        if not _is_multirun(config) or job_return.status != JobStatus.FAILED:
            return
        exc = job_return._return_value
        run_dir = Path(str(config.hydra.runtime.output_dir))
        metrics = read_info(run_dir)
        if metrics.get("status") in (None, "running"):
            # Failed before experiment.run could record it (e.g. while importing): record it here.
            from mtlrec.runs.run_dir import RunDir

            RunDir(run_dir).update_metrics(status="failed", error=_one_line(exc))
        if _is_interrupt(exc):
            # Ctrl-C / SIGTERM stops the sweep, not just this job. In-process (basic launcher) the
            # remaining jobs would start next, so leave now; other launchers get the signal
            # themselves (joblib's workers share the terminal's process group, SLURM cancels).
            launcher = str(OmegaConf.select(config, "hydra.launcher._target_", default=""))
            if launcher == BASIC_LAUNCHER:
                _print_stopped(run_dir, str(exc))
                self.reported = True
                self._restore_jobs_env()  # the sweep ends here: Hydra calls no on_multirun_end
                raise SystemExit(getattr(exc, "exit_code", 130))
            return
        if not isinstance(exc, MtlrecError):
            # The sweep goes on, so this is the only place the traceback is shown.
            trace = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
            log.error("job %s failed:\n%s", run_dir, trace.rstrip())
        sweeper = str(OmegaConf.select(config, "hydra.sweeper._target_", default=""))
        if sweeper == BASIC_SWEEPER:
            job_return.status = JobStatus.COMPLETED
            job_return.return_value = math.nan

    def _stopped_line(self) -> None:
        """At exit of an in-process sweep that did not end: name the interrupted job."""
        if self.reported:
            return
        stopped = [
            (path, metrics)
            for path, metrics in sweep_jobs(self.sweep_dir)
            if metrics.get("status") == "interrupted" and _mtime(path) >= self.started
        ]
        if stopped:
            path, metrics = stopped[-1]
            _print_stopped(path, str(metrics.get("error") or "interrupted"))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        self.reported = True  # the sweep ended: nothing was stopped
        atexit.unregister(self._stopped_line)
        self._restore_jobs_env()
        sweep_dir = Path(str(config.hydra.sweep.dir))
        print_sweep_table(sweep_dir)
        bad = [
            (path, metrics)
            for path, metrics in sweep_jobs(sweep_dir)
            if metrics.get("status") != "completed"
            and (path / METRICS_FILE).stat().st_mtime >= self.started
        ]
        if not bad:
            return
        total = sum(1 for p, _ in sweep_jobs(sweep_dir) if _mtime(p) >= self.started)
        lines = [
            f"{path}: {metrics.get('status', 'unknown')}: {metrics.get('error') or 'no error recorded'}"
            for path, metrics in bad
        ]
        print(
            f"mtlrec train: error: {len(bad)} of {total} sweep job(s) did not complete "
            f"(see each dir's metrics.json and train.log):\n  " + "\n  ".join(lines),
            file=sys.stderr,
            flush=True,
        )
        # Hydra turns exceptions raised by callbacks into warnings (exit status 0); SystemExit
        # is not an Exception, so it gets through and the sweep command exits with status 1.
        raise SystemExit(1)


def print_sweep_table(sweep_dir: Path) -> None:
    """The sweep's jobs as `mtlrec compare` shows them, then the command that shows them again.

    A summary only: whatever goes wrong reading the job dirs, the sweep's own outcome stands.
    """
    from mtlrec.commands.compare import main as compare

    print(f"\nsweep {sweep_dir}:", flush=True)
    try:
        compare([str(sweep_dir)])
    except Exception as e:  # noqa: BLE001 - a summary must never fail the sweep
        print(f"(no table: {e})", flush=True)
    print(f"compare again: mtlrec compare {sweep_dir}", flush=True)


def _print_stopped(run_dir: Path, reason: str) -> None:
    print(
        f"mtlrec train: sweep stopped: {run_dir}: {reason}; the remaining jobs were not run",
        file=sys.stderr,
        flush=True,
    )


def _mtime(path: Path) -> float:
    return (path / METRICS_FILE).stat().st_mtime


def parallel_jobs(launcher: Any, cpu_count: int) -> int:
    """How many jobs of the sweep run at once on this machine, from the launcher config.

    joblib's n_jobs follows joblib: -1 = all cores, -2 = all but one, i.e. cores + 1 + n_jobs.
    """
    target = str(OmegaConf.select(launcher, "_target_", default="") or "")
    if "joblib" in target.lower():
        n_jobs = int(OmegaConf.select(launcher, "n_jobs", default=1) or 1)
        return max(1, n_jobs if n_jobs > 0 else cpu_count + 1 + n_jobs)
    return 1


def thread_share(mode: str, launcher: Any, cpu_count: int) -> int | None:
    """Torch threads for one job of a sweep, or None to leave torch's default.

    * single runs and sequential sweeps: None (the job has the machine to itself);
    * submitit launchers: `hydra.launcher.cpus_per_task` when set (the CPUs the job was given);
    * joblib launcher: cores // parallel jobs, at least 1.
    """
    if str(mode) != "RunMode.MULTIRUN":
        return None
    target = str(OmegaConf.select(launcher, "_target_", default="") or "")
    if "submitit" in target.lower():
        cpus = OmegaConf.select(launcher, "cpus_per_task", default=None)
        return int(cpus) if cpus else None
    parallel = parallel_jobs(launcher, cpu_count)
    if parallel <= 1:
        return None
    return max(1, cpu_count // parallel)


def job_thread_share() -> int | None:
    """`thread_share` for the Hydra job running in this process (None outside Hydra)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None
    hydra_cfg = HydraConfig.get()
    return thread_share(str(hydra_cfg.mode), hydra_cfg.launcher, usable_cores())


def usable_cores() -> int:
    """Cores this process may run on (taskset / cgroup cpusets / SLURM), not all of the machine's."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1
