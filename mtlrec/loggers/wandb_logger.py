"""`logger=wandb`: the Weights & Biases mirror of a run (extra `wandb`).

What it logs is what the other loggers log: the resolved config, per epoch the history row
(x axis `epoch`), every trainer.log_every_n_steps optimizer steps `step/lr`,
`step/train/<task>_loss`, `step/weight/<task>` (x axis `global_step`; W&B's define_metric), and at
the end the final metrics and the status in the run's summary. The run's files go under
`<run dir>/wandb/` (`mode: offline`, or WANDB_MODE=offline, works without a network; `wandb sync`
uploads them later). The run dir's `wandb.json` names the W&B run: a resumed run continues it
(same id) and does not log again the epochs and steps it had logged.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

from mtlrec.errors import MtlrecError
from mtlrec.loggers.base import RunLogger, _final_values, _numeric

WANDB_RECORD = "wandb.json"  # in the run dir: {"run_id", "last_epoch", "last_step"}


class WandbLogger(RunLogger):
    name: ClassVar[str] = "wandb"
    requires: ClassVar[str | None] = "wandb"
    install: ClassVar[str] = (
        'logger=wandb needs the wandb package: pip install "mtlrec[wandb]" (or use logger=none)'
    )

    @dataclass
    class Config:
        name: str = "wandb"
        project: str = "mtlrec"
        entity: str | None = None  # None = your W&B default entity
        # None = WANDB_MODE or W&B's default (online)
        mode: Literal["online", "offline", "disabled"] | None = None
        run_name: str | None = None  # None = the run dir's path below the current dir
        group: str | None = None  # e.g. a sweep's name, to group its jobs

    @classmethod
    def from_config(cls, cfg: Any, run_dir: Path, config: Mapping[str, Any]) -> RunLogger:
        run_dir = Path(run_dir).resolve()
        try:
            default_name = str(run_dir.relative_to(Path.cwd()))
        except ValueError:
            default_name = str(run_dir)
        record = _read_record(run_dir) if config.get("resume") else {}
        return cls(cfg, run_dir, config, cfg.run_name or default_name, record)

    def __init__(
        self,
        cfg: Any,
        run_dir: Path,
        config: Mapping[str, Any],
        run_name: str,
        record: Mapping[str, Any],
    ):
        try:
            import wandb
        except ImportError:
            raise MtlrecError(self.install) from None
        logging.getLogger("wandb").setLevel(logging.WARNING)
        self.record_path = run_dir / WANDB_RECORD
        self.run = wandb.init(
            project=cfg.project,
            entity=cfg.entity,
            name=run_name,
            group=cfg.group,
            dir=str(run_dir),
            config=dict(config),
            mode=cfg.mode,
            id=record.get("run_id"),
            resume="allow" if record.get("run_id") else None,
            settings=wandb.Settings(quiet=True, console="off"),
        )
        self.defined: set[str] = set()
        self.last_epoch = int(record.get("last_epoch", 0))
        self.last_step = int(record.get("last_step", 0))
        self._save_record()

    def _save_record(self) -> None:
        from mtlrec.runs.atomic import atomic_write_json

        record = {"run_id": self.run.id, "last_epoch": self.last_epoch, "last_step": self.last_step}
        atomic_write_json(self.record_path, record)

    def _define(self, keys: Any, axis: str) -> None:
        for key in keys:
            if key not in self.defined:
                self.run.define_metric(key, step_metric=axis)
                self.defined.add(key)

    def resume_at(self, epoch: int, step: int) -> None:
        """Nothing to drop: W&B keeps what it got; what was logged is not logged again."""

    def log_epoch(self, row: Mapping[str, Any]) -> None:
        epoch = int(row["epoch"])
        if epoch <= self.last_epoch:  # logged before the run was stopped and resumed
            return
        values = _numeric(row)
        self._define(values, "epoch")
        self.run.log({**values, "epoch": epoch})
        self.last_epoch = epoch
        self._save_record()

    def log_step(self, step: int, values: Mapping[str, float]) -> None:
        if step <= self.last_step:
            return
        named = {f"step/{k}": float(v) for k, v in values.items()}
        self._define(named, "global_step")
        self.run.log({**named, "global_step": step})
        self.last_step = step

    def finish(self, status: str, metrics: Mapping[str, Any] | None = None) -> None:
        self.run.summary.update({**_final_values(metrics), "status": status})
        self._save_record()
        self.run.finish(exit_code=0 if status == "completed" else 1)


def _read_record(run_dir: Path) -> dict[str, Any]:
    try:
        data = json.loads((run_dir / WANDB_RECORD).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
