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
wrong `logger.*` key or type is one line. A new logger is a module of this package (base.py holds
the interface, RunLogger; one module per tool: tensorboard_logger.py, mlflow_logger.py,
wandb_logger.py), its class in LOGGERS below, and a `conf/logger/<name>.yaml` holding its
Config's fields.

All loggers share one small interface: `log_epoch(row)` at the end of every epoch and
`finish(status, metrics)` once. MLflow / TensorBoard names may not hold every character of
ours, so names pass through `_safe_name` (`gate/ctr/expert_0` stays as is).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mtlrec.config_schema import build
from mtlrec.errors import MtlrecError
from mtlrec.loggers.base import RunLogger
from mtlrec.loggers.mlflow_logger import MlflowLogger
from mtlrec.loggers.tensorboard_logger import TensorBoardLogger
from mtlrec.loggers.wandb_logger import WandbLogger

LOGGERS: dict[str, type[RunLogger]] = {
    cls.name: cls for cls in (RunLogger, TensorBoardLogger, MlflowLogger, WandbLogger)
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

    logger.name 'comet' is unknown; use one of: none, tensorboard, mlflow, wandb
    logger.trackin_uri is not a key of logger (did you mean logger.tracking_uri?); ...
    logger.experiment_name=3: expected a string
    """
    values = _plain(logger_cfg)
    name = values.get("name", "none")
    if not isinstance(name, str) or name not in LOGGERS:
        raise MtlrecError(f"logger.name '{name}' is unknown; use one of: {', '.join(LOGGERS)}")
    cls = LOGGERS[name]
    checked = build(cls.Config, values, "logger")
    if cls.requires is not None:
        import importlib.util

        if importlib.util.find_spec(cls.requires) is None:
            raise MtlrecError(cls.install)
    return cls, checked


def build_logger(
    logger_cfg: Mapping[str, Any] | None,
    run_dir: Path,
    config: Mapping[str, Any],
    resume: Any = None,
) -> RunLogger:
    """The logger chosen by the `logger` config group (None or name none = no-op); `resume`: the
    TrainState a resumed run continues from (what the logger got past it is done again)."""
    cls, cfg = logger_config(logger_cfg)
    logger = cls.from_config(cfg, Path(run_dir), config)
    if resume is not None:
        epochs = max((int(r["epoch"]) for r in resume.history), default=0)
        logger.resume_at(epochs, int(resume.global_step))
    return logger


def log_step_scalars(logger: RunLogger, trainer: Any, step: int, lr: float) -> None:
    """Every trainer.log_every_n_steps optimizer steps: the lr, the step's per-task losses (this
    rank's rows) and the balancer's task weights, named like the epoch's history columns."""
    if step % trainer.cfg.log_every_n_steps:
        return
    values = {"lr": lr}
    losses = trainer.stepper.last_losses
    if losses is not None:
        names = [t.name for t in trainer.loss_tasks]
        values |= {f"train/{n}_loss": v for n, v in zip(names, losses.tolist(), strict=True)}
    weights = trainer.task_weights().tolist()
    names = trainer.balancer.task_names
    values |= {f"weight/{n}": w for n, w in zip(names, weights, strict=True)}
    logger.log_step(step, values)
