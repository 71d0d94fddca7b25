"""The run directory: every artifact of a run, each written atomically (temp file + rename).

    <run dir>/
      .hydra/            config.yaml, hydra.yaml, overrides.yaml (written by Hydra)
      .mtlrec.lock       held by the process that owns the dir (runs/lock.py)
      train.log          the log of the run
      env.json           versions, device, threads
      history.csv        one row per epoch
      metrics.json       status, seed, best epoch, val/test metrics at the best epoch, speed
      checkpoints/       best.pt, last.pt (model, optimizer, config, dataset spec, ...)

A reader never sees a half-written file: it sees the old version or the new one (runs/atomic.py).
The names and metrics.json's schema (RunSummary) live in runs/records.py.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import torch
from hydra.core.utils import JobReturn
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from mtlrec.errors import MtlrecError
from mtlrec.runs import lock
from mtlrec.runs import resume as resume_attempt
from mtlrec.runs.atomic import (
    NoSpaceError,
    atomic_hard_link,
    atomic_write,
    atomic_write_json,
    atomic_write_text,
    remove_stale_temps,
)
from mtlrec.runs.records import (
    CHECKPOINT_DIR,
    ENV_FILE,
    HISTORY_FILE,
    HYDRA_DIR,
    LAST,
    METRICS_FILE,
    RESUME_ACCEPTED,
    RUN_MARKERS,
    RunSummary,
    holds_a_run,
    read_info,
)

__all__ = [
    "CHECKPOINT_DIR",
    "ENV_FILE",
    "HISTORY_FILE",
    "METRICS_FILE",
    "RESUME_ACCEPTED",
    "RUN_MARKERS",
    "RunDir",
    "RunDirGuard",
    "atomic_torch_save",
    "atomic_write_json",
    "atomic_write_text",
    "holds_a_run",
]


def atomic_torch_save(obj: Any, path: Path) -> None:
    atomic_write(Path(path), lambda f: torch.save(obj, f))


class RunDir:
    def __init__(self, path: str | Path, read_only: bool = False):
        self.path = Path(path)
        # Ranks > 0 of a data-parallel run read the run dir but never write it (rank 0 does).
        self.read_only = read_only
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            probe = self.path / f".write-test-{os.getpid()}"
            probe.write_text("")
            probe.unlink()
        except OSError as e:
            raise MtlrecError(
                f"{self.path}: the run dir is not writable ({e.strerror}); set hydra.run.dir to a writable place"
            ) from None
        if not read_only:
            where = (self.path, self.checkpoints, self.checkpoints / "tables")
            removed = [p for d in where for p in remove_stale_temps(d)]
            if removed:
                logging.getLogger("mtlrec").warning(
                    "removed %d temp file(s) left by killed processes: %s",
                    len(removed),
                    ", ".join(p.name for p in removed),
                )

    @property
    def checkpoints(self) -> Path:
        return self.path / CHECKPOINT_DIR

    def write_json(self, name: str, obj: Any) -> None:
        if self.read_only:
            return
        atomic_write_json(self.path / name, obj)

    def read_metrics(self) -> dict:
        path = self.path / METRICS_FILE
        return json.loads(path.read_text()) if path.is_file() else {}

    def read_summary(self) -> RunSummary:
        return RunSummary.from_json(self.read_metrics())

    def update_metrics(self, **fields: Any) -> dict:
        """Merge fields into metrics.json (read-modify-write, atomically); returns its content.

        Every field must be declared in records.RunSummary (a TypeError names the others).
        `wall_seconds` is the session's: the earlier sessions' time of a resumed run is added."""
        summary = self.read_summary()
        if fields.get("wall_seconds") is not None and summary.earlier_wall_seconds:
            fields["wall_seconds"] += summary.earlier_wall_seconds
        summary = summary.updated(**fields)
        data = summary.to_json()
        try:
            self.write_json(METRICS_FILE, data)  # (not on a read-only rank)
        except NoSpaceError as e:
            if fields.get("status") not in ("failed", "interrupted"):
                raise
            # The run is ending on an error of its own: that one is what the user must see.
            logging.getLogger("mtlrec").warning("%s (the run's end was not recorded)", e)
        return data

    def write_history(self, rows: list[dict[str, Any]]) -> None:
        if self.read_only:
            return
        columns: list[str] = []
        for row in rows:
            columns += [k for k in row if k not in columns]
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow(
                {k: ("" if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}
            )
        atomic_write_text(self.path / HISTORY_FILE, buf.getvalue())

    def save_checkpoint(self, name: str, payload: dict) -> Path:
        path = self.checkpoints / name
        if not self.read_only:
            atomic_torch_save(payload, path)
        return path

    def link_checkpoint(self, name: str, payload: dict, source: str = LAST) -> Path:
        """`name` becomes a hard link to the checkpoint `source`: no second copy. Checkpoints are
        never written in place, so it keeps its bytes when `source` later names another file.
        Without hard links, `payload` (what `source` holds) is written instead."""
        path = self.checkpoints / name
        if not self.read_only and not atomic_hard_link(self.checkpoints / source, path):
            atomic_torch_save(payload, path)  # no hard links here (some network/FUSE systems)
        return path


class RunDirGuard(Callback):
    """Owns the run dir (or sweep dir) for the process's life, and refuses to reuse one.

    Runs before Hydra creates the job dir or writes .hydra/, so a refused start touches nothing
    of the old run. The dir is claimed with an exclusive lock (runs/lock.py): a second
    `mtlrec train` into the same dir, or a resume of a run that is still training, stops with
    one line and exit 1. `resume=RUN_DIR` is the one way to continue in an existing run dir.
    Hydra turns exceptions raised in callbacks into warnings, so the guard prints its one line
    and exits itself.
    """

    def __init__(self) -> None:
        self.job_lock: lock.DirLock | None = None
        self.own_lock: lock.DirLock | None = None  # the run dir's or the sweep dir's

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        if int(os.environ.get("RANK", "0") or 0) > 0:
            return  # torchrun: rank 0 checks the run dir; the other ranks join the run it starts
        run_dir = Path(str(config.hydra.run.dir))
        resume = OmegaConf.select(config, "resume", default=None)
        _refuse_unwritable(run_dir, "hydra.run.dir")
        # The claim comes first: while another process owns the dir, that is what the user
        # hears about (not whatever files it has written so far).
        hint = (
            "wait for that run to end (or stop it) before resuming it"
            if resume
            else "wait for it to end or pick another hydra.run.dir"
        )
        claimed = _claim_or_refuse(run_dir, hint)
        if not resume and holds_a_run(run_dir):
            claimed.release()
            _refuse(_holds_a_run_message(run_dir))
        self.own_lock = claimed
        if resume:
            resume_attempt.begin(run_dir, OmegaConf.select(config, "hydra.output_subdir"))
        elif (run_dir / METRICS_FILE).exists():
            _start_over(run_dir)

    def on_run_end(self, config: DictConfig, **kwargs: Any) -> None:
        # (A run that ends by SystemExit, e.g. a signal, releases at the process's exit.)
        self._release_own()

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        _refuse_unwritable(sweep_dir, "hydra.sweep.dir")
        claimed = _claim_or_refuse(
            sweep_dir, "wait for that sweep to end or pick another hydra.sweep.dir"
        )
        if _holds_sweep_runs(sweep_dir):
            claimed.release()
            _refuse(_holds_sweep_message(sweep_dir))
        self.own_lock = claimed

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        self._release_own()

    def _release_own(self) -> None:
        if self.own_lock is not None:
            self.own_lock.release()
            self.own_lock = None

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        # Each job of a sweep owns its job dir while it runs (in the job's own process, whatever
        # the launcher), so `mtlrec train resume=SWEEP/3` waits for job 3 to end.
        if str(OmegaConf.select(config, "hydra.mode", default="")) != "RunMode.MULTIRUN":
            return
        job_dir = Path(str(config.hydra.runtime.output_dir))
        self.job_lock = _claim_or_refuse(job_dir, "wait for it to end")

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        if self.job_lock is not None:
            self.job_lock.release()
            self.job_lock = None


def _holds_a_run_message(run_dir: Path) -> str:
    return (
        f"{run_dir}: already holds a run (metrics.json/checkpoints); pick another "
        "hydra.run.dir (runs are never overwritten)"
    )


def _start_over(run_dir: Path) -> None:
    """A run killed before its first checkpoint left metrics.json (and its .hydra/) only: the
    new run replaces that record (its resume attempts' configs included)."""
    old = read_info(run_dir).get("status") or "unknown"
    (run_dir / METRICS_FILE).unlink()
    for attempt in (run_dir / HYDRA_DIR).glob("resume-*"):
        shutil.rmtree(attempt, ignore_errors=True)
    print(
        f"{run_dir}: starting the run again (the one there, status {old}, "
        "stopped before its first checkpoint)",
        file=sys.stderr,
        flush=True,
    )


def _holds_sweep_runs(sweep_dir: Path) -> bool:
    return sweep_dir.is_dir() and any(holds_a_run(p) for p in sweep_dir.iterdir() if p.is_dir())


def _holds_sweep_message(sweep_dir: Path) -> str:
    return (
        f"{sweep_dir}: already holds the runs of a sweep; pick another hydra.sweep.dir "
        "(runs are never overwritten)"
    )


def _claim_or_refuse(directory: Path, hint: str) -> lock.DirLock:
    try:
        return lock.claim(directory, hint)
    except MtlrecError as e:
        _refuse(str(e))
    except OSError as e:
        _refuse(f"{directory}: cannot create its lock file {lock.LOCK_FILE} ({e.strerror})")
    raise AssertionError("not reached")


def _refuse(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
    raise SystemExit(1)


def _refuse_unwritable(path: Path, key: str) -> None:
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK):
        _refuse(
            f"{path}: cannot create the run dir ({existing} is not a writable directory); set {key} to a writable place"
        )
