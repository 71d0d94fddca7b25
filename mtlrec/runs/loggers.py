"""Metric loggers: mirror a run to tools people already use (`logger=` config group).

The run dir (metrics.json, history.csv) is always the record; a logger only mirrors it:

* `none` (default): nothing;
* `tensorboard`: per-epoch scalars (step = epoch), the resolved config as text, and the final
  metrics + flat config as hparams, in `<run dir>/tensorboard` (extra `tensorboard`);
* `mlflow`: the flat config as params (JSON text: numbers read as numbers), per-epoch metrics
  (step = epoch), final metrics, the run's status, tags for the run dir (extra `mlflow`). By
  default a sqlite database `mlflow.db` next to the run dir (a sweep's jobs share the sweep
  dir's; `mlflow ui --backend-store-uri sqlite:///PATH/mlflow.db`), any tracking URI (http://...)
  with `logger.tracking_uri`. The run dir's `mlflow.json` names the MLflow run: a resumed run
  continues it (same run id) instead of starting another.

Every logger is a class in `LOGGERS` (name -> class) with a typed `Config` dataclass: the
`logger` config group is checked against it (`build(cls.Config, cfg.logger, "logger")`), so a
wrong `logger.*` key or type is one line. A new logger is a class here (or a module that adds
itself to LOGGERS) and a `conf/logger/<name>.yaml` holding its Config's fields.

All loggers share one small interface: `log_epoch(row)` at the end of every epoch and
`finish(status, metrics)` once. MLflow / TensorBoard names may not hold every character of
ours, so names pass through `_safe_name` (`gate/ctr/expert_0` stays as is).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import math
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from mtlrec.config_schema import build
from mtlrec.errors import MtlrecError

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

    @dataclass
    class Config:
        name: str = "none"

    @classmethod
    def from_config(cls, cfg: Any, run_dir: Path, config: Mapping[str, Any]) -> RunLogger:
        """The logger for a checked Config, the run dir and the run's resolved config."""
        return cls()

    def log_epoch(self, row: Mapping[str, Any]) -> None:
        """One history row (per-epoch train losses, val metrics, gates, speed); step = row["epoch"]."""

    def finish(self, status: str, metrics: Mapping[str, Any] | None = None) -> None:
        """Final metrics (val/test at the best epoch, speed) and the run's status; closes the logger."""


class TensorBoardLogger(RunLogger):
    name: ClassVar[str] = "tensorboard"

    @dataclass
    class Config:
        name: str = "tensorboard"
        log_dir: str | None = None  # None = <run dir>/tensorboard

    @classmethod
    def from_config(cls, cfg: Any, run_dir: Path, config: Mapping[str, Any]) -> RunLogger:
        return cls(Path(cfg.log_dir) if cfg.log_dir else Path(run_dir) / "tensorboard", config)

    def __init__(self, log_dir: Path, config: Mapping[str, Any]):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise MtlrecError(
                'logger=tensorboard needs the tensorboard package: pip install "mtlrec[tensorboard]" '
                "(or use logger=none)"
            ) from None
        self.log_dir = Path(log_dir)
        self.writer = SummaryWriter(log_dir=str(self.log_dir))
        self.params = typed_params(config)
        self.writer.add_text(
            "config", "```\n" + json.dumps(config, indent=2, default=str) + "\n```", 0
        )

    def log_epoch(self, row: Mapping[str, Any]) -> None:
        step = int(row["epoch"])
        for key, value in _numeric(row).items():
            self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def finish(self, status: str, metrics: Mapping[str, Any] | None = None) -> None:
        final = _final_values(metrics)
        # hparams: the config next to the final metrics, so TensorBoard's HPARAMS tab compares a sweep.
        self.writer.add_hparams(
            dict(self.params, status=status), final or {"final/none": 0.0}, run_name="."
        )
        self.writer.flush()
        self.writer.close()


class MlflowLogger(RunLogger):
    name: ClassVar[str] = "mlflow"

    @dataclass
    class Config:
        name: str = "mlflow"
        tracking_uri: str | None = None  # None = sqlite:///<run dir's parent>/mlflow.db
        experiment_name: str = "mtlrec"
        run_name: str | None = None  # None = the run dir's path below the current dir

    @classmethod
    def from_config(cls, cfg: Any, run_dir: Path, config: Mapping[str, Any]) -> RunLogger:
        run_dir = Path(run_dir).resolve()
        try:
            default_name = str(run_dir.relative_to(Path.cwd()))
        except ValueError:
            default_name = str(run_dir)
        record = _read_mlflow_record(run_dir) if config.get("resume") else {}
        return cls(
            tracking_uri=record.get("tracking_uri") or cfg.tracking_uri or _default_uri(run_dir),
            experiment_name=cfg.experiment_name,
            run_name=cfg.run_name or default_name,
            config=config,
            tags={"mtlrec.run_dir": str(run_dir)},
            resume_run_id=record.get("run_id"),
            record=run_dir / MLFLOW_RECORD,
        )

    def __init__(
        self,
        tracking_uri: str,
        experiment_name: str,
        run_name: str,
        config: Mapping[str, Any],
        tags: Mapping[str, str],
        resume_run_id: str | None = None,
        record: Path | None = None,
    ):
        try:
            from mlflow.entities import Metric, Param, RunTag
            from mlflow.tracking import MlflowClient
        except ImportError:
            raise MtlrecError(
                'logger=mlflow needs MLflow: pip install "mtlrec[mlflow]" (or use logger=none)'
            ) from None
        self._Metric, self._Param, self._RunTag = Metric, Param, RunTag
        self.tracking_uri = tracking_uri
        _check_sqlite_support(tracking_uri)
        with _store_lock(tracking_uri):  # sweep jobs creating one sqlite database at once
            self.client = MlflowClient(tracking_uri=tracking_uri)
            experiment_id = self._experiment_id(experiment_name)
        self.resumed = resume_run_id is not None and self._exists(resume_run_id)
        if self.resumed:
            # Params were logged when the run started (MLflow refuses to change them).
            self.run_id = str(resume_run_id)
            self.client.update_run(self.run_id, status="RUNNING")
            self.client.set_tag(self.run_id, "mtlrec.resumed", "true")
            return
        self.run_id = self.client.create_run(
            experiment_id, run_name=run_name, tags=dict(tags)
        ).info.run_id
        if record is not None:
            from mtlrec.runs.atomic import atomic_write_json

            atomic_write_json(record, {"tracking_uri": tracking_uri, "run_id": self.run_id})
        params = [
            Param(_safe_name(k), v[:6000]) for k, v in mlflow_params(config).items()
        ]  # MLflow caps param values at 6000 chars and batches at 100 params
        for i in range(0, len(params), 100):
            self.client.log_batch(self.run_id, params=params[i : i + 100])

    def _experiment_id(self, name: str) -> str:
        experiment = self.client.get_experiment_by_name(name)
        if experiment is not None:
            return experiment.experiment_id
        try:
            return self.client.create_experiment(name)
        except Exception:  # a parallel sweep job created it first
            return self.client.get_experiment_by_name(name).experiment_id

    def _exists(self, run_id: str) -> bool:
        try:
            self.client.get_run(run_id)
        except Exception:  # deleted, or another tracking server: start a new MLflow run
            return False
        return True

    def _log(self, values: Mapping[str, float], step: int) -> None:
        now = int(time.time() * 1000)
        metrics = [self._Metric(_safe_name(k), v, now, step) for k, v in values.items()]
        for i in range(0, len(metrics), 1000):
            self.client.log_batch(self.run_id, metrics=metrics[i : i + 1000])

    def log_epoch(self, row: Mapping[str, Any]) -> None:
        self._log(_numeric(row), int(row["epoch"]))

    def finish(self, status: str, metrics: Mapping[str, Any] | None = None) -> None:
        final = _final_values(metrics)
        if final:
            self._log(final, 0)
        self.client.set_tag(self.run_id, "mtlrec.status", status)
        mlflow_status = {"completed": "FINISHED", "interrupted": "KILLED"}.get(status, "FAILED")
        self.client.set_terminated(self.run_id, mlflow_status)


MLFLOW_RECORD = "mlflow.json"  # in the run dir: {"tracking_uri": ..., "run_id": ...}


def _default_uri(run_dir: Path) -> str:
    """sqlite next to the run dir: a sweep's jobs (SWEEP/0, SWEEP/1, ...) share SWEEP/mlflow.db.
    (MLflow's file store ./mlruns is deprecated and warns.)"""
    return f"sqlite:///{run_dir.parent / 'mlflow.db'}"


def _read_mlflow_record(run_dir: Path) -> dict[str, str]:
    try:
        data = json.loads((run_dir / MLFLOW_RECORD).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def mlflow_params(config: Mapping[str, Any]) -> dict[str, str]:
    """MLflow params are text: each value as JSON (2, 0.001, true, null, [64, 32]); strings as
    they are. MLflow's UI and `mlflow.search_runs` then read the numbers as numbers."""
    return {k: v if isinstance(v, str) else json.dumps(v) for k, v in typed_params(config).items()}


def _check_sqlite_support(tracking_uri: str) -> None:
    """mlflow-skinny does not pull in what its sqlite store needs: say so in one line."""
    if not tracking_uri.startswith("sqlite:"):
        return
    import importlib.util

    missing = [m for m in ("sqlalchemy", "alembic") if importlib.util.find_spec(m) is None]
    if missing:
        raise MtlrecError(
            f"logger=mlflow keeps runs in {tracking_uri}, which needs {' and '.join(missing)}: "
            f"pip install {' '.join(missing)} (or set logger.tracking_uri=http://YOUR_SERVER)"
        )


@contextlib.contextmanager
def _store_lock(tracking_uri: str):
    """An exclusive lock beside a sqlite database while MLflow creates or migrates its tables,
    with MLflow's and alembic's INFO lines about that kept off the console."""
    quiet = [logging.getLogger(n) for n in ("mlflow.store.db.utils", "alembic")]
    levels = [q.level for q in quiet]
    for q in quiet:
        q.setLevel(logging.WARNING)
    try:
        if not tracking_uri.startswith("sqlite:///"):
            yield
            return
        db = Path(tracking_uri[len("sqlite:///") :])
        db.parent.mkdir(parents=True, exist_ok=True)
        with open(db.with_name(db.name + ".lock"), "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            yield
    finally:
        for q, level in zip(quiet, levels, strict=True):
            q.setLevel(level)


LOGGERS: dict[str, type[RunLogger]] = {
    cls.name: cls for cls in (RunLogger, TensorBoardLogger, MlflowLogger)
}


def _plain(logger_cfg: Any) -> dict[str, Any]:
    if logger_cfg is None:
        return {}
    if not isinstance(logger_cfg, Mapping):
        try:  # an OmegaConf node
            from omegaconf import OmegaConf

            return dict(OmegaConf.to_container(logger_cfg, resolve=True))  # type: ignore[arg-type]
        except Exception:
            raise MtlrecError(
                f"logger={logger_cfg!r}: expected a logger config group ({', '.join(LOGGERS)})"
            ) from None
    return dict(logger_cfg)


def logger_config(logger_cfg: Mapping[str, Any] | None) -> tuple[type[RunLogger], Any]:
    """(logger class, its checked Config) for the `logger` config group; one line per error:

    logger.name 'wandb' is unknown; use one of: none, tensorboard, mlflow
    logger.trackin_uri is not a key of logger (did you mean logger.tracking_uri?); ...
    logger.experiment_name=3: expected a string
    """
    values = _plain(logger_cfg)
    name = values.get("name", "none")
    if not isinstance(name, str) or name not in LOGGERS:
        raise MtlrecError(f"logger.name '{name}' is unknown; use one of: {', '.join(LOGGERS)}")
    cls = LOGGERS[name]
    return cls, build(cls.Config, values, "logger")


def build_logger(
    logger_cfg: Mapping[str, Any] | None, run_dir: Path, config: Mapping[str, Any]
) -> RunLogger:
    """The logger chosen by the `logger` config group (None or name none = no-op)."""
    cls, cfg = logger_config(logger_cfg)
    return cls.from_config(cfg, Path(run_dir), config)
