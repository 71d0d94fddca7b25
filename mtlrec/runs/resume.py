"""What a resume attempt may change in a run dir, and the undo of one that was refused.

A resume attempt (`mtlrec train resume=RUN_DIR`) claims the run dir (runs/lock.py), then
mtlrec.experiment marks metrics.json `running` and checks the checkpoint and the config. Until
the attempt is accepted (its .hydra/resume-<time>/ACCEPTED mark, written once the checkpoint is
restored) it must change nothing: a refused attempt puts metrics.json, train.log and what
building the run rewrites (env.json, the torchrec backend's sharding_plan.json, which the next
resume rebuilds its plan from) back as they were and removes its .hydra/resume-<time>/ dir
(`settle_refused`).

Wall time adds up over the sessions of a run: the claim stores the time of the earlier sessions
in metrics.json (`earlier_wall_seconds`), and RunDir.update_metrics adds it to the session's.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from mtlrec.runs.atomic import atomic_write, atomic_write_json
from mtlrec.runs.records import (
    BEST,
    CHECKPOINT_DIR,
    ENV_FILE,
    HISTORY_FILE,
    LAST,
    LOG_FILE,
    METRICS_FILE,
    PREVIOUS,
    RESUME_ACCEPTED,
    SHARDING_PLAN_FILE,
    RunSummary,
)

# Records a resume attempt rewrites while it builds the run, before it is accepted.
REWRITTEN = (ENV_FILE, SHARDING_PLAN_FILE)


@dataclass(frozen=True)
class Snapshot:
    """A run dir's state when a resume attempt claimed it (taken while holding its lock)."""

    run_dir: Path
    attempt_dir: Path | None  # .hydra/resume-<time>/ of this attempt (written by Hydra)
    metrics: bytes | None  # metrics.json as it was (None: there was none)
    log_size: int | None  # train.log's size (None: there was none)
    progress: tuple  # (path, mtime) of history.csv and the checkpoints: training writes them
    rewritten: tuple[tuple[str, bytes | None], ...] = ()  # REWRITTEN's contents (None: absent)

    @property
    def accepted(self) -> bool:
        """The attempt's ACCEPTED mark, or training wrote something (ranks of a data-parallel
        run have no Hydra job to mark the attempt with)."""
        if self.attempt_dir is not None and (self.attempt_dir / RESUME_ACCEPTED).is_file():
            return True
        return _progress(self.run_dir) != self.progress


# The attempts this process claimed and has not settled yet (one per run dir).
_ATTEMPTS: dict[Path, Snapshot] = {}


def _read(path: Path) -> bytes | None:
    return path.read_bytes() if path.is_file() else None


def _put_back(path: Path, data: bytes | None) -> None:
    if data is None:
        path.unlink(missing_ok=True)
    elif _read(path) != data:
        atomic_write(path, lambda f: f.write(data))


def _size(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return None


def _progress(run_dir: Path) -> tuple:
    out: list[tuple[str, int | None]] = []
    for path in (run_dir / HISTORY_FILE, *(run_dir / CHECKPOINT_DIR / n for n in (LAST, BEST))):
        try:
            out.append((path.name, path.stat().st_mtime_ns))
        except FileNotFoundError:
            out.append((path.name, None))
    return tuple(out)


def begin(run_dir: Path, output_subdir: str | None) -> Snapshot:
    """Called by the run dir guard once it holds the lock of a run dir being resumed."""
    run_dir = Path(run_dir)
    metrics_path = run_dir / METRICS_FILE
    metrics = metrics_path.read_bytes() if metrics_path.is_file() else None
    snap = Snapshot(
        run_dir=run_dir,
        attempt_dir=run_dir / output_subdir if output_subdir else None,
        metrics=metrics,
        log_size=_size(run_dir / LOG_FILE),
        progress=_progress(run_dir),
        rewritten=tuple((name, _read(run_dir / name)) for name in REWRITTEN),
    )
    _ATTEMPTS[run_dir.resolve()] = snap
    if metrics is not None:
        summary = RunSummary.from_json(json.loads(metrics))
        earlier = summary.wall_seconds or 0.0
        atomic_write_json(metrics_path, summary.updated(earlier_wall_seconds=earlier).to_json())
    return snap


def settle_refused() -> list[Path]:
    """Undo every resume attempt of this process that was not accepted; the run dirs undone.

    Called by `mtlrec train` after the job ended (the lock is still held then: a refused run
    ends by SystemExit, and the guard releases at the process's exit)."""
    undone = []
    for key, snap in list(_ATTEMPTS.items()):
        del _ATTEMPTS[key]
        if snap.accepted:
            continue
        _undo(snap)
        undone.append(snap.run_dir)
    return undone


def _undo(snap: Snapshot) -> None:
    for name, data in ((METRICS_FILE, snap.metrics), *snap.rewritten):
        _put_back(snap.run_dir / name, data)
    log = snap.run_dir / LOG_FILE
    if snap.log_size is None:
        log.unlink(missing_ok=True)
    elif _size(log) is not None:
        os.truncate(log, snap.log_size)
    if snap.attempt_dir is not None and snap.attempt_dir.is_dir():
        shutil.rmtree(snap.attempt_dir, ignore_errors=True)


def checkpoint_problem(run_dir: Path) -> str | None:
    """Why RUN_DIR's checkpoints cannot be resumed from, before anything runs (None: they can,
    or there are none). A last.pt that is a directory is not silently skipped."""
    for name in (LAST, PREVIOUS):
        path = Path(run_dir) / CHECKPOINT_DIR / name
        if path.exists() and not path.is_file():
            return f"{path}: is a directory, not a checkpoint file; move it away and resume again"
    return None


def has_checkpoint(run_dir: Path) -> bool:
    return any((Path(run_dir) / CHECKPOINT_DIR / n).is_file() for n in (LAST, PREVIOUS))


def mark_resume_accepted(run_dir: Path) -> None:
    """Mark this resume attempt's .hydra/resume-*/ dir as accepted: the next resume replays its
    overrides (cli.translate_resume). A refused attempt leaves no mark, so it changes nothing."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():  # called in-process, without a Hydra job
        return
    subdir = HydraConfig.get().output_subdir
    if subdir and Path(subdir).name.startswith("resume-"):
        (run_dir / subdir / RESUME_ACCEPTED).write_text("")
