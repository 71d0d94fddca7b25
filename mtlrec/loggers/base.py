"""What every metric logger shares: the no-op `RunLogger` interface and the value helpers
(flat config, typed params, finite numbers, final/* metrics, safe names). See loggers/__init__.py."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

# metrics.json fields that are bookkeeping, not results: never mirrored as final/* metrics.
NOT_METRICS = ("schema_version",)


def flatten_config(config: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """{"model": {"num_experts": 4}} -> {"model.num_experts": "4"}; lists as JSON."""
    flat: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten_config(value, f"{name}."))
        elif isinstance(value, (list, tuple)):
            flat[name] = json.dumps(value)
        else:
            flat[name] = "null" if value is None else str(value)
    return flat


def typed_params(config: Mapping[str, Any]) -> dict[str, bool | int | float | str]:
    """The flat config with numbers and booleans kept as such (TensorBoard's HPARAMS tab sorts
    and filters them); lists as JSON, null as "null"."""
    from mtlrec.runs.files import flatten

    typed: dict[str, bool | int | float | str] = {}
    for key, value in flatten(dict(config)).items():
        if isinstance(value, (bool, int, float, str)):
            typed[key] = value
        elif isinstance(value, (list, tuple, dict)):
            typed[key] = json.dumps(value)
        else:
            typed[key] = "null" if value is None else str(value)
    return typed


def _numeric(row: Mapping[str, Any]) -> dict[str, float]:
    """The finite numbers of a history row / metrics dict (epoch excluded: it is the step)."""
    out = {}
    for key, value in row.items():
        if key == "epoch" or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if math.isfinite(float(value)):
            out[key] = float(value)
    return out


def _final_values(metrics: Mapping[str, Any] | None) -> dict[str, float]:
    """metrics.json -> {"final/test/ctr_auc": ..., "final/best_epoch": ..., ...}."""
    metrics = {k: v for k, v in (metrics or {}).items() if k not in NOT_METRICS}
    values = {**_numeric(metrics), **_numeric(metrics.get("metrics") or {})}
    return {f"final/{k}": v for k, v in values.items()}


def _safe_name(name: str) -> str:
    # MLflow allows alphanumerics, _ - . space / ; replace anything else.
    return re.sub(r"[^0-9A-Za-z_\-. /]", "_", name)


class RunLogger:
    """No-op logger (`logger=none`): the interface every logger implements."""

    name: ClassVar[str] = "none"
    # The package the logger needs (an optional extra) and the line saying how to install it:
    # checked with the config, before any run dir exists.
    requires: ClassVar[str | None] = None
    install: ClassVar[str] = ""

    @dataclass
    class Config:
        name: str = "none"

    @classmethod
    def from_config(cls, cfg: Any, run_dir: Path, config: Mapping[str, Any]) -> RunLogger:
        """The logger for a checked Config, the run dir and the run's resolved config."""
        return cls()

    def log_epoch(self, row: Mapping[str, Any]) -> None:
        """One history row (per-epoch train losses, val metrics, gates, speed); step = row["epoch"]."""

    def log_step(self, step: int, values: Mapping[str, float]) -> None:
        """Values of one optimizer step every trainer.log_every_n_steps (lr, train/<task>_loss,
        weight/<task>), logged as step/<name>; step = optimizer steps so far."""

    def resume_at(self, epoch: int, step: int) -> None:
        """A resumed run continues after `epoch` completed epochs and `step` optimizer steps:
        what the logger got beyond them (a run killed after its last checkpoint) is done again,
        so it must not appear twice."""

    def finish(self, status: str, metrics: Mapping[str, Any] | None = None) -> None:
        """Final metrics (val/test at the best epoch, speed) and the run's status; closes the logger."""
