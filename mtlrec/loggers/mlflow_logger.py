"""`logger=mlflow`: the MLflow mirror of a run (see loggers/__init__.py for what it writes)."""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from mtlrec.errors import MtlrecError
from mtlrec.loggers.base import (
    RunLogger,
    _final_values,
    _numeric,
    _safe_name,
    typed_params,
)


class MlflowLogger(RunLogger):
    name: ClassVar[str] = "mlflow"
    requires: ClassVar[str | None] = "mlflow"
    install: ClassVar[str] = (
        'logger=mlflow needs MLflow: pip install "mtlrec[mlflow]" (or use logger=none)'
    )

    @dataclass
    class Config:
        name: str = "mlflow"
        tracking_uri: str | None = None  # None = MLflow's own default (./mlflow.db from the cwd)
        experiment_name: str = "mtlrec"
        run_name: str | None = None  # None = the run dir's path below the current dir
        log_artifacts: bool = True  # config, history.csv, metrics.json, checkpoints/best.pt

    @classmethod
    def from_config(cls, cfg: Any, run_dir: Path, config: Mapping[str, Any]) -> RunLogger:
        run_dir = Path(run_dir).resolve()
        try:
            default_name = str(run_dir.relative_to(Path.cwd()))
        except ValueError:
            default_name = str(run_dir)
        record = _read_mlflow_record(run_dir) if config.get("resume") else {}
        logger = cls(
            tracking_uri=record.get("tracking_uri") or cfg.tracking_uri or _default_uri(),
            experiment_name=cfg.experiment_name,
            run_name=cfg.run_name or default_name,
            config=config,
            tags={"mtlrec.run_dir": str(run_dir)},
            resume_run_id=record.get("run_id"),
            record=run_dir / MLFLOW_RECORD,
        )
        logger.artifacts_from = run_dir if cfg.log_artifacts else None
        return logger

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
            raise MtlrecError(self.install) from None
        self._Metric, self._Param, self._RunTag = Metric, Param, RunTag
        self._steps: list[Any] = []  # step/* values not sent yet (log_step)
        self._logged_epoch, self._logged_step = 0, 0  # a resumed run's: not logged again
        self.tracking_uri = tracking_uri
        self.artifacts_from: Path | None = None  # the run dir whose files finish() logs
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
            experiment = self.client.get_experiment_by_name(name)
            if experiment is None:  # it did not: the create failure is the error
                raise
            return experiment.experiment_id

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

    def resume_at(self, epoch: int, step: int) -> None:
        """MLflow cannot drop values: those the MLflow run already has are not logged again."""
        if not self.resumed:
            return
        last = {
            key: max((m.step for m in self.client.get_metric_history(self.run_id, key)), default=0)
            for key in ("train/loss", "step/lr")
        }
        self._logged_epoch, self._logged_step = last["train/loss"], last["step/lr"]

    def log_step(self, step: int, values: Mapping[str, float]) -> None:
        """Kept and sent with the epoch's row (one batch request, not one per step)."""
        if step <= self._logged_step:
            return
        now = int(time.time() * 1000)
        self._steps.extend(self._Metric(f"step/{k}", v, now, step) for k, v in values.items())

    def _flush_steps(self) -> None:
        for i in range(0, len(self._steps), 1000):
            self.client.log_batch(self.run_id, metrics=self._steps[i : i + 1000])
        self._steps = []

    def log_epoch(self, row: Mapping[str, Any]) -> None:
        self._flush_steps()
        if int(row["epoch"]) > self._logged_epoch:
            self._log(_numeric(row), int(row["epoch"]))

    def finish(self, status: str, metrics: Mapping[str, Any] | None = None) -> None:
        self._flush_steps()  # an interrupted epoch's steps
        final = _final_values(metrics)
        if final:
            self._log(final, 0)
        self.client.set_tag(self.run_id, "mtlrec.status", status)
        if self.artifacts_from is not None:
            self._log_artifacts(self.artifacts_from)
        mlflow_status = {"completed": "FINISHED", "interrupted": "KILLED"}.get(status, "FAILED")
        self.client.set_terminated(self.run_id, mlflow_status)

    def _log_artifacts(self, run_dir: Path) -> None:
        """The run's config, history, metrics and best model (what exists of them) as artifacts:
        a run found with `mlflow.search_runs()` carries what rebuilds and judges it. The best
        model goes with the files it names (table files, DCP folders), so that it loads."""
        from mtlrec.training.checkpoint import parts_of

        for name, folder in ARTIFACTS:
            path = run_dir / name
            if path.is_file():
                self.client.log_artifact(self.run_id, str(path), folder)
                for part in parts_of(path) if name.endswith(".pt") else []:
                    where = str(part.parent.relative_to(run_dir))
                    self.client.log_artifact(self.run_id, str(part), where)


MLFLOW_RECORD = "mlflow.json"  # in the run dir: {"tracking_uri": ..., "run_id": ...}
ARTIFACTS = (  # (file in the run dir, artifact folder or None for the top)
    (".hydra/config.yaml", None),
    ("history.csv", None),
    ("metrics.json", None),
    ("checkpoints/best.pt", "checkpoints"),
)


def _default_uri() -> str:
    """MLflow's own default, as `mlflow.search_runs()` sees it from the same working directory:
    MLFLOW_TRACKING_URI when set, else sqlite:///<cwd>/mlflow.db (MLflow 3's default; MLflow 2's
    file store ./mlruns is deprecated, so the same sqlite file is used there)."""
    import mlflow

    uri = str(mlflow.get_tracking_uri())
    if uri.startswith("file:") or "://" not in uri:
        return f"sqlite:///{Path.cwd() / 'mlflow.db'}"
    return uri


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
