"""One trial = one ordinary `mtlrec train` run dir, watched epoch by epoch for pruning.

The trial runs as a child process. Each epoch's row lands in its history.csv (written atomically at
the end of every epoch); the watcher reports the monitored value to Optuna and, when the pruner
says stop, sends SIGTERM: the run writes its checkpoint and ends as `interrupted`, a normal run dir
that `mtlrec train resume=...` could even continue.
"""

from __future__ import annotations

import csv
import json
import math
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

POLL_SECONDS = 0.2


@dataclass
class TrialOutcome:
    state: str  # complete | pruned | failed | interrupted
    value: float | None  # the first metric's (the monitored one) at the run's best epoch
    epochs: int
    error: str | None = None
    before_training: bool = False  # failed before its first epoch (often a config error)
    values: list[float] | None = None  # every metric of a multi-objective study, same epoch


def read_history(path: Path) -> list[dict[str, str]]:
    try:
        with path.open(newline="") as f:
            return list(csv.DictReader(f))
    except FileNotFoundError:
        return []


def epoch_value(row: dict[str, str], metric: str) -> float | None:
    raw = row.get(metric, "")
    try:
        value = float(raw)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


class TrialProcess:
    """A running `mtlrec train` child; `stop()` asks it to checkpoint and end (SIGTERM)."""

    def __init__(self, overrides: list[str], run_dir: Path, log_path: Path):
        self.run_dir = run_dir
        self.log_path = log_path
        command = [sys.executable, "-m", "mtlrec", "train", *overrides, f"hydra.run.dir={run_dir}"]
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("w") as log:
            self.proc = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        self.stopped = False

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.stopped = True
            self.proc.send_signal(signal.SIGTERM)

    def last_line(self) -> str:
        try:
            lines = [ln for ln in self.log_path.read_text().splitlines() if ln.strip()]
        except OSError:
            return ""
        return lines[-1].strip() if lines else ""


def watch(trial: Any, child: TrialProcess, metrics: list[str], cancelled: Any) -> TrialOutcome:
    """Report each new epoch's value to `trial`; stop the child when the pruner says so.

    Only a single-objective study reports (and prunes): Optuna has no intermediate values for
    several objectives.
    """
    history = child.run_dir / "history.csv"
    reported, pruned = 0, False
    while True:
        done = child.proc.poll() is not None
        rows = read_history(history)
        for row in rows[reported:] if len(metrics) == 1 else []:
            value = epoch_value(row, metrics[0])
            if value is not None:
                trial.report(value, int(row["epoch"]))
                if not pruned and trial.should_prune():
                    pruned = True
                    child.stop()
        reported = len(rows)
        if cancelled.is_set():
            child.stop()
        if done:
            break
        time.sleep(POLL_SECONDS)
    return outcome(child, metrics, len(rows), pruned, cancelled.is_set())


def outcome(child: TrialProcess, metrics: list[str], epochs: int, pruned: bool, cancelled: bool):
    code = child.proc.returncode
    summary = read_summary(child.run_dir)
    metric = metrics[0]
    if pruned:
        return TrialOutcome("pruned", None, epochs)
    if cancelled and code != 0:
        return TrialOutcome("interrupted", None, epochs, "the study was interrupted")
    if code == 0 and summary.get("status") == "completed":
        value = summary.get("best_value")
        if (
            isinstance(value, (int, float))
            and math.isfinite(value)
            and summary.get("monitor") == metric
        ):
            values = best_epoch_values(child.run_dir, summary.get("best_epoch"), metrics)
            if values is not None:
                return TrialOutcome("complete", float(value), epochs, values=values)
            missing = ", ".join(metrics[1:])
            return TrialOutcome("failed", None, epochs, f"no finite {missing} in {child.run_dir}")
        return TrialOutcome("failed", None, epochs, f"no finite {metric} in {child.run_dir}")
    error = summary.get("error") or child.last_line() or f"exit code {code}"
    return TrialOutcome("failed", None, epochs, str(error), before_training=epochs == 0)


def best_epoch_values(run_dir: Path, best_epoch: Any, metrics: list[str]) -> list[float] | None:
    """Each metric at the run's best epoch (its model selection), from history.csv."""
    row = next(
        (r for r in read_history(run_dir / "history.csv") if r.get("epoch") == str(best_epoch)),
        {},
    )
    values = [epoch_value(row, m) for m in metrics]
    return None if any(v is None for v in values) else [float(v) for v in values if v is not None]


def read_summary(run_dir: Path) -> dict[str, Any]:
    try:
        data = json.loads((run_dir / "metrics.json").read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
