"""TorchRec's and FBGEMM's chatter kept off mtlrec's console and train.log.

Building FBGEMM's table-batched kernels logs every table's constructor arguments (a line of
several KB each) at INFO on the *root* logger, and TorchRec's planner logs its estimator choice
and a storage-reservation hint; TorchRec 1.8 also warns (FutureWarning) that ShardedTensor, the
type its sharded tables still are, is deprecated. None of it is something a user of mtlrec can act
on, and it buried the run's own lines. `quiet_sharding` drops those records while the layers are
sharded and silences the ShardedTensor warning and torch's `is_fx_tracing` note for the process
(checkpoints and the first step meet them later); `quiet_import` drops FBGEMM's "Successfully
loaded" lines while TorchRec is imported.
TorchRec's records at ERROR and the root logger's warnings still show.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager


class _LibraryChatter(logging.Filter):
    """Drops the root logger's INFO records (FBGEMM's `logging.info`) and TorchRec's below ERROR."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == "root":
            return record.levelno >= logging.WARNING
        if record.name.startswith("torchrec"):
            return record.levelno >= logging.ERROR
        return True


@contextmanager
def quiet_sharding() -> Iterator[None]:
    """While TorchRec plans and builds the sharded modules: their chatter is dropped."""
    ignore_sharded_tensor_deprecation()
    ignore_fx_tracing_note()
    chatter = _LibraryChatter()
    handlers = list(logging.getLogger().handlers)
    for handler in handlers:
        handler.addFilter(chatter)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning, module=r"torchrec(\.|$)")
            yield
    finally:
        for handler in handlers:
            handler.removeFilter(chatter)


@contextmanager
def quiet_import() -> Iterator[None]:
    """While fbgemm_gpu and torchrec are imported: FBGEMM logs a "Successfully loaded: '<lib>.so'"
    line for each of its ~14 libraries at INFO on the root logger (before a run's own logging
    is set up, so the console showed them); its warnings and errors still show."""
    chatter = _LibraryChatter()
    root = logging.getLogger()
    root.addFilter(chatter)  # a record made on the root logger passes its filters first
    try:
        yield
    finally:
        root.removeFilter(chatter)


class _FxTracingNote(logging.Filter):
    """torch's one-time note that `is_fx_tracing` also answers for torch.export: TorchRec's to
    heed, not mtlrec's users'."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("is_fx_tracing will return true")


FX_TRACE_LOGGER = "torch.fx._symbolic_trace"


def ignore_fx_tracing_note() -> None:
    """Drop that note for the process (TorchRec's forward meets it at the first step)."""
    logger = logging.getLogger(FX_TRACE_LOGGER)
    if not any(isinstance(f, _FxTracingNote) for f in logger.filters):
        logger.addFilter(_FxTracingNote())


def ignore_sharded_tensor_deprecation() -> None:
    """TorchRec 1.8's tables are ShardedTensors; its deprecation warning is not the user's to fix."""
    warnings.filterwarnings("ignore", message="Please use DTensor instead", category=FutureWarning)
