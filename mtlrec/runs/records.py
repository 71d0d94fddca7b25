"""The run directory's schema and its reader: what a run dir holds, and how to read it back.

    <run dir>/
      .hydra/            config.yaml, hydra.yaml, overrides.yaml (written by Hydra)
      .mtlrec.lock       while a process owns the dir (see runs/lock.py)
      train.log          the log of the run
      env.json           versions, device, threads
      history.csv        one row per epoch
      metrics.json       a RunSummary: status, seed, best epoch, val/test metrics, speed
      sharding_plan.json trainer.embedding_backend=torchrec: where each table's shards live
      checkpoints/       best.pt, last.pt, last.prev.pt

`RunSummary` is metrics.json: every field any part of mtlrec writes is declared here, so a
reader knows what to expect and `RunDir.update_metrics` refuses a field nobody declared.
A metrics.json without `schema_version` is version 1 (the layout before the field existed;
the fields are the same). Fields a newer mtlrec wrote and this one does not know are kept
(`RunSummary.extra`) and written back unchanged.

`Run` / `read_run` / `find_run_dirs` are what compare, plots, evaluate and sweeps read run dirs
with. Imports nothing heavy: no torch, no pandas, no mtlrec.training.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from mtlrec.runs.files import flatten, load_config, read_history, read_overrides

METRICS_FILE = "metrics.json"
HISTORY_FILE = "history.csv"
ENV_FILE = "env.json"
SHARDING_PLAN_FILE = "sharding_plan.json"  # written by training.torchrec_backend
LOG_FILE = "train.log"
LOCK_FILE = ".mtlrec.lock"
CHECKPOINT_DIR = "checkpoints"
BEST, LAST, PREVIOUS = "best.pt", "last.pt", "last.prev.pt"
HYDRA_DIR = ".hydra"
HYDRA_CONFIG = Path(HYDRA_DIR) / "config.yaml"
HYDRA_OVERRIDES = Path(HYDRA_DIR) / "overrides.yaml"
# Any of these in a dir means a run was started there (holds_a_run says whether it got anywhere).
RUN_MARKERS = (METRICS_FILE, HISTORY_FILE, CHECKPOINT_DIR)
# Written into a resume attempt's .hydra/resume-<time>/ once it passed every check and trains.
RESUME_ACCEPTED = "ACCEPTED"
# Dirs inside a run dir that are never run dirs themselves.
SKIP_DIRS = {CHECKPOINT_DIR, "tensorboard", "wandb", HYDRA_DIR, ".submitit", "mlruns",
             "__pycache__"}  # fmt: skip

SCHEMA_VERSION = 2
Status = Literal["running", "completed", "failed", "interrupted"]
STATUSES = ("running", "completed", "failed", "interrupted")


@dataclass
class RunSummary:
    """metrics.json. None = not known (yet); `error` is always written (null = no error)."""

    schema_version: int = SCHEMA_VERSION
    status: str | None = None  # one of STATUSES
    error: str | None = None  # the one-line reason of a failed / interrupted run
    seed: int | None = None
    data_order_seed: int | None = None
    started_at: str | None = None  # ISO time, seconds
    resumed_at: str | None = None  # ISO time of the latest accepted resume
    model: str | None = None
    config_hash: str | None = None  # the run's config at its start (mtlrec.training.binding)
    dataset: str | None = None
    monitor: str | None = None  # e.g. val/mean_auc
    monitor_mode: str | None = None  # max | min
    best_epoch: int | None = None
    best_value: float | None = None
    epochs_run: int | None = None
    stopped_early: bool | None = None
    metrics: dict[str, float | None] | None = None  # val at the best epoch + test, by key
    # metric key -> why its value is null, e.g. "test/income_auc": "all 2,000 rows have label
    # income=0 (AUC needs both classes)"; absent when every metric has a value
    undefined_metrics: dict[str, str] | None = None
    wall_seconds: float | None = None  # over every session of the run (resumes add up)
    earlier_wall_seconds: float | None = None  # of the sessions before the latest resume
    train_samples_per_s: float | None = None
    eval_samples_per_s: float | None = None
    num_parameters: int | None = None
    device: str | None = None
    num_threads: int | None = None
    world_size: int | None = None
    effective_batch_size: int | None = None
    # trainer.keep_best_per_task: the second protocol next to `metrics` (the monitored best
    # epoch's): each task at its own best val epoch (mtlrec.training.per_task)
    per_task_best: dict[str, Any] | None = None
    # init_from (warm start): the checkpoint, what was loaded / skipped / new / excluded, the
    # embedding rows carried over by value, the frozen parameters (mtlrec.training.warm_start)
    init: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # fields this version does not know

    @classmethod
    def fields(cls) -> tuple[str, ...]:
        """The declared metrics.json field names (what update_metrics accepts)."""
        return tuple(f.name for f in dataclasses.fields(cls) if f.name != "extra")

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RunSummary:
        """From a parsed metrics.json of any version (no schema_version = version 1)."""
        if not isinstance(data, dict):
            raise ValueError(f"expected a JSON object, got {type(data).__name__}")
        known = set(cls.fields())
        values = {k: v for k, v in data.items() if k in known}
        values.setdefault("schema_version", 1)
        return cls(**values, extra={k: v for k, v in data.items() if k not in known})

    def to_json(self) -> dict[str, Any]:
        """The JSON object: set fields in declaration order, unknown fields kept; NaN -> null."""
        out: dict[str, Any] = {}
        for name in self.fields():
            value = getattr(self, name)
            if value is not None or name == "error":
                out[name] = value
        out.update(self.extra)
        return json_safe(out)

    def updated(self, **fields: Any) -> RunSummary:
        """A copy with `fields` set; a name RunSummary does not declare is a TypeError."""
        unknown = [k for k in fields if k not in self.fields()]
        if unknown:
            raise TypeError(
                f"metrics.json field(s) {', '.join(unknown)} are not declared in "
                "mtlrec.runs.records.RunSummary; declare them there first"
            )
        return dataclasses.replace(self, **{**fields, "schema_version": SCHEMA_VERSION})


def json_safe(value: Any) -> Any:
    """NaN/inf are not JSON: store them as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def read_summary(run_dir: Path) -> RunSummary:
    """metrics.json of a run dir (an empty summary when there is none yet)."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return RunSummary()
    return RunSummary.from_json(json.loads(path.read_text()))


def read_info(run_dir: Path) -> dict[str, Any]:
    """metrics.json as written, or {} when it is missing or unreadable (a half-copied dir)."""
    try:
        data = json.loads((Path(run_dir) / METRICS_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


# --- reading run dirs --------------------------------------------------------------------------


@dataclass
class Run:
    """What one run dir says about its run (everything read from disk, nothing recomputed)."""

    path: Path
    config: dict[str, Any] = field(default_factory=dict)  # flat: "model.num_experts" -> 4
    overrides: list[str] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)  # metrics.json as written
    history: list[dict[str, Any]] = field(default_factory=list)  # history.csv rows
    problems: list[str] = field(default_factory=list)  # unreadable files

    @property
    def summary(self) -> RunSummary:
        return RunSummary.from_json(self.info)

    @property
    def status(self) -> str:
        if self.info.get("status"):
            return str(self.info["status"])
        return "not started" if not self.history else "running"

    @property
    def metrics(self) -> dict[str, float]:
        """The metric values of a completed run (empty for any other status)."""
        if self.status != "completed":
            return {}
        return {
            k: float(v)
            for k, v in (self.info.get("metrics") or {}).items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)
        }

    @property
    def metric_names(self) -> list[str]:
        """Every metric a completed run recorded, those recorded as null (undefined) included."""
        if self.status != "completed":
            return []
        return [k for k in (self.info.get("metrics") or {}) if isinstance(k, str)]

    @property
    def monitor(self) -> str | None:
        return self.info.get("monitor") or None


def is_run_dir(path: Path) -> bool:
    return (path / METRICS_FILE).is_file() or (path / HYDRA_CONFIG).is_file()


def holds_a_run(path: Path) -> bool:
    """A run that got somewhere: an epoch in history.csv or a checkpoint file. A run killed
    before its first checkpoint (metrics.json alone, status running/interrupted/failed) has
    nothing to lose and may be started again in the same dir."""
    path = Path(path)
    if (path / HISTORY_FILE).exists() or read_info(path).get("status") == "completed":
        return True
    checkpoints = path / CHECKPOINT_DIR  # its tables/, sharded/ alone are no checkpoint: parts
    return checkpoints.is_dir() and any(  # a .pt names (a kill in the first one's write left them)
        not p.name.startswith(".") and (p.suffix == ".pt" or not p.is_dir())
        for p in checkpoints.iterdir()
    )


def find_run_dirs(paths: list[str | Path]) -> list[Path]:
    """Every run dir at or below the given paths, each once, in path order (job numbers numerically)."""
    from mtlrec.errors import MtlrecError

    found: dict[Path, None] = {}
    for given in paths:
        root = Path(given).expanduser()
        if not root.exists():
            raise MtlrecError(f"{given}: no such file or directory")
        if root.is_file():
            if root.name not in (METRICS_FILE, HISTORY_FILE):
                raise MtlrecError(f"{given}: is a file; give a run dir or a dir holding run dirs")
            root = root.parent
        if is_run_dir(root):
            found.setdefault(root.resolve())
            continue
        matches = _walk_run_dirs(root)
        if not matches:
            raise MtlrecError(
                f"{given}: holds no run dir (a dir with metrics.json or .hydra/config.yaml)"
            )
        for m in sorted(matches, key=natural_key):
            found.setdefault(m)
    return list(found)


def _walk_run_dirs(root: Path) -> list[Path]:
    matches = []
    for dirpath, dirnames, _ in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in SKIP_DIRS]
        here = Path(dirpath)
        if is_run_dir(here):
            matches.append(here.resolve())
            dirnames[:] = []  # a run dir's subdirs are its own artifacts
    return matches


def natural_key(path: Path) -> list:
    """Path parts with numbers compared as numbers: job 10 after job 9."""
    return [(0, int(p), "") if p.isdigit() else (1, 0, p) for p in Path(path).parts]


def _read_info(path: Path) -> dict[str, Any]:
    data = json.loads(path.read_text()) or {}
    RunSummary.from_json(data)  # not a JSON object: reported as a problem of the run
    return data


def read_run(path: Path) -> Run:
    """One run dir -> Run. A missing or unreadable file is recorded, never raised."""
    run = Run(path=Path(path))
    readers = (
        (HYDRA_CONFIG, lambda p: setattr(run, "config", flatten(load_config(p)))),
        (HYDRA_OVERRIDES, lambda p: setattr(run, "overrides", read_overrides(p))),
        (METRICS_FILE, lambda p: setattr(run, "info", _read_info(p))),
        (HISTORY_FILE, lambda p: setattr(run, "history", read_history(p))),
    )
    for name, reader in readers:
        file = run.path / name
        if not file.is_file():
            continue
        try:
            reader(file)
        except Exception as e:  # a half-copied or hand-edited file: show the run anyway
            run.problems.append(f"{name}: {type(e).__name__}: {e}")
    return run


def load_runs(paths: list[str | Path]) -> list[Run]:
    return [read_run(p) for p in find_run_dirs(paths)]
