"""`logger=tensorboard`: the TensorBoard mirror of a run, in ONE event file per log dir.

torch's SummaryWriter starts a new event file for every writer (and `add_hparams` another one), so
a resumed run would hold two files and the steps done again after its last checkpoint twice. Here
the run's events go to one file of a fixed name (`events.out.tfevents.<time>.<host>.mtlrec`),
written record by record with TensorBoard's own RecordWriter and summary protos: a resumed run
first rewrites the file without what lies beyond its checkpoint (epochs after the last completed
one, steps after the checkpoint's optimizer step, the interrupted run's final hparams), atomically
(temp file + rename), then appends to it.

Scalars: per epoch the history row (step = epoch); every trainer.log_every_n_steps optimizer steps
`step/lr`, `step/train/<task>_loss`, `step/weight/<task>` (step = optimizer steps); at the end
`final/*` and the hparams (the config next to the final metrics, for the HPARAMS tab).
"""

from __future__ import annotations

import json
import math
import os
import socket
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, ClassVar

from mtlrec.errors import MtlrecError
from mtlrec.loggers.base import RunLogger, _final_values, _numeric, typed_params

SUFFIX = ".mtlrec"  # the event file this logger owns in its log dir
STEP_PREFIX = "step/"
FINAL_PREFIXES = ("final/", "_hparams_/")  # written by finish(), again after a resume


class TensorBoardLogger(RunLogger):
    name: ClassVar[str] = "tensorboard"
    requires: ClassVar[str | None] = "tensorboard"
    install: ClassVar[str] = (
        'logger=tensorboard needs the tensorboard package: pip install "mtlrec[tensorboard]" '
        "(or use logger=none)"
    )

    @dataclass
    class Config:
        name: str = "tensorboard"
        log_dir: str | None = None  # None = <run dir>/tensorboard

    @classmethod
    def from_config(cls, cfg: Any, run_dir: Path, config: Mapping[str, Any]) -> RunLogger:
        return cls(Path(cfg.log_dir) if cfg.log_dir else Path(run_dir) / "tensorboard", config)

    def __init__(self, log_dir: Path, config: Mapping[str, Any]):
        try:
            from tensorboard.compat.proto import event_pb2
            from torch.utils.tensorboard import summary
        except ImportError:
            raise MtlrecError(self.install) from None
        self._event_pb2, self._summary = event_pb2, summary
        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.params = typed_params(config)
        existing = sorted(self.log_dir.glob(f"events.out.tfevents.*{SUFFIX}"))
        self._file: BinaryIO | None = None
        if existing:  # this run's file (a resume): continue it, less an earlier final summary
            self.path = existing[-1]
            self._rewrite(math.inf, math.inf)
        else:
            host = socket.gethostname().replace(".", "_")
            self.path = self.log_dir / f"events.out.tfevents.{int(time.time()):010d}.{host}{SUFFIX}"
            self._open()
            text = "```\n" + json.dumps(config, indent=2, default=str) + "\n```"
            self._write(summary.text("config", text), 0)
            self.flush()

    # -- the event file ------------------------------------------------------------------------
    def _open(self) -> None:
        from tensorboard.summary.writer.record_writer import RecordWriter

        new = not self.path.exists()
        self._file = open(self.path, "ab")  # noqa: SIM115  (kept open for the run)
        self._records = RecordWriter(self._file)
        if new:
            version = self._event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2")
            self._records.write(version.SerializeToString())

    def _write(self, summary: Any, step: int) -> None:
        event = self._event_pb2.Event(wall_time=time.time(), step=int(step), summary=summary)
        self._records.write(event.SerializeToString())

    def flush(self) -> None:
        if self._file is not None:
            self._file.flush()

    def _events(self) -> Iterator[Any]:
        """The events of the file, up to a torn last record (a killed process)."""
        from tensorboard.backend.event_processing.event_file_loader import RawEventFileLoader

        # raw records, parsed here: EventFileLoader would migrate scalars to tensor summaries
        for record in RawEventFileLoader(str(self.path)).Load():
            yield self._event_pb2.Event.FromString(record)

    def _rewrite(self, epoch: float, step: float) -> None:
        """Keep the events up to `epoch` / optimizer `step` (config text included), drop the
        final summary; atomically, then append from there."""
        if self._file is not None:
            self._file.close()
            self._file = None
        kept = [e for e in self._events() if _keep(e, epoch, step)]
        final = self.path
        self.path = final.with_name(".rewrite.tmp")
        self.path.unlink(missing_ok=True)
        self._open()
        for event in kept:
            self._records.write(event.SerializeToString())
        assert self._file is not None
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        os.replace(self.path, final)
        self.path = final
        self._open()

    # -- the logger interface ------------------------------------------------------------------
    def resume_at(self, epoch: int, step: int) -> None:
        self._rewrite(epoch, step)

    def log_epoch(self, row: Mapping[str, Any]) -> None:
        step = int(row["epoch"])
        for key, value in _numeric(row).items():
            self._write(self._summary.scalar(key, value), step)
        self.flush()

    def log_step(self, step: int, values: Mapping[str, float]) -> None:
        for key, value in values.items():  # flushed with the epoch
            self._write(self._summary.scalar(f"{STEP_PREFIX}{key}", float(value)), step)

    def finish(self, status: str, metrics: Mapping[str, Any] | None = None) -> None:
        final = _final_values(metrics) or {"final/none": 0.0}
        # hparams: the config next to the final metrics, so TensorBoard's HPARAMS tab compares a
        # sweep (as torch's add_hparams writes them, into this file instead of a second one).
        for proto in self._summary.hparams(dict(self.params, status=status), final):
            self._write(proto, 0)
        for key, value in final.items():
            self._write(self._summary.scalar(key, value), 0)
        self.flush()
        if self._file is not None:
            self._file.close()
            self._file = None


def _keep(event: Any, epoch: float, step: float) -> bool:
    """Whether an event of an earlier process stays in the file of a run resumed at `epoch`,
    optimizer `step` (math.inf: a restart that keeps everything but the final summary)."""
    if event.HasField("file_version") or not event.HasField("summary"):
        return False  # the new file writes its own header
    tags = [v.tag for v in event.summary.value]
    if any(t.startswith(FINAL_PREFIXES) for t in tags):
        return False
    if any(t.startswith(STEP_PREFIX) for t in tags):
        return event.step <= step
    if any(t.startswith("config") for t in tags):
        return True
    return event.step <= epoch
