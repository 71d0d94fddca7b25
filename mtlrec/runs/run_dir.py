"""The run directory: every artifact of a run, each written atomically (temp file + rename).

    <run dir>/
      .hydra/            config.yaml, hydra.yaml, overrides.yaml (written by Hydra)
      train.log          the log of the run
      env.json           versions, device, threads
      history.csv        one row per epoch
      metrics.json       status, seed, best epoch, val/test metrics at the best epoch, speed
      checkpoints/       best.pt, last.pt (model, optimizer, config, dataset spec, ...)

A reader never sees a half-written file: it sees the old version or the new one.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from mtlrec.errors import MtlrecError

METRICS_FILE = "metrics.json"
HISTORY_FILE = "history.csv"
ENV_FILE = "env.json"
CHECKPOINT_DIR = "checkpoints"
RUN_MARKERS = (METRICS_FILE, HISTORY_FILE, CHECKPOINT_DIR)
# Written into a resume attempt's .hydra/resume-<time>/ once it passed every check and trains.
RESUME_ACCEPTED = "ACCEPTED"


def _atomic_write(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    _atomic_write(Path(path), lambda f: f.write(text.encode()))


def _json_safe(value: Any) -> Any:
    """NaN/inf are not JSON: store them as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(_json_safe(obj), indent=2, sort_keys=False) + "\n")


def atomic_torch_save(obj: Any, path: Path) -> None:
    _atomic_write(Path(path), lambda f: torch.save(obj, f))


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

    def update_metrics(self, **fields: Any) -> dict:
        """Merge fields into metrics.json (read-modify-write, atomically)."""
        data = self.read_metrics()
        data.update(fields)
        self.write_json(METRICS_FILE, data)  # (not on a read-only rank)
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


def holds_a_run(path: Path) -> bool:
    return any((Path(path) / m).exists() for m in RUN_MARKERS)


class RunDirGuard(Callback):
    """Refuses to start a run in a directory that already holds one, and checks it is writable.

    Runs before Hydra creates the job dir or writes .hydra/, so nothing of the old run is touched.
    `resume=RUN_DIR` is the one way to continue in an existing run dir. Hydra turns exceptions
    raised in callbacks into warnings, so the guard reports its one line and exits itself.
    """

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        if OmegaConf.select(config, "resume", default=None):
            return
        if int(os.environ.get("RANK", "0") or 0) > 0:
            return  # torchrun: rank 0 checks the run dir; the other ranks join the run it starts
        run_dir = Path(str(config.hydra.run.dir))
        if holds_a_run(run_dir):
            _refuse(
                f"{run_dir}: already holds a run (metrics.json/checkpoints); pick another hydra.run.dir (runs are never overwritten)"
            )
        _refuse_unwritable(run_dir, "hydra.run.dir")

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        if sweep_dir.is_dir() and any(holds_a_run(p) for p in sweep_dir.iterdir() if p.is_dir()):
            _refuse(
                f"{sweep_dir}: already holds the runs of a sweep; pick another hydra.sweep.dir (runs are never overwritten)"
            )
        _refuse_unwritable(sweep_dir, "hydra.sweep.dir")


def _refuse(message: str) -> None:
    print(message, file=sys.stderr)
    raise SystemExit(1)


def _refuse_unwritable(path: Path, key: str) -> None:
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK):
        _refuse(
            f"{path}: cannot create the run dir ({existing} is not a writable directory); set {key} to a writable place"
        )
