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

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from mtlrec.config_schema import build
from mtlrec.errors import MtlrecError
from mtlrec.runs.logger_base import (  # noqa: F401  (re-exported: their old home)
    NOT_METRICS,
    RunLogger,
    _final_values,
    _numeric,
    _safe_name,
    flatten_config,
    typed_params,
)
from mtlrec.runs.mlflow_logger import (  # noqa: F401
    MLFLOW_RECORD,
    MlflowLogger,
    mlflow_params,
)


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

    def log_step(self, step: int, values: Mapping[str, float]) -> None:
        for key, value in values.items():  # buffered by the writer, flushed with the epoch
            self.writer.add_scalar(f"step/{key}", value, step)

    def finish(self, status: str, metrics: Mapping[str, Any] | None = None) -> None:
        final = _final_values(metrics)
        # hparams: the config next to the final metrics, so TensorBoard's HPARAMS tab compares a sweep.
        self.writer.add_hparams(
            dict(self.params, status=status), final or {"final/none": 0.0}, run_name="."
        )
        self.writer.flush()
        self.writer.close()


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
