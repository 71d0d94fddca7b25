"""TorchRec's and FBGEMM's chatter kept off mtlrec's console and train.log.

Building FBGEMM's table-batched kernels logs every table's constructor arguments (a line of
several KB each) at INFO on the *root* logger, and TorchRec's planner logs its estimator choice
and a storage-reservation hint; TorchRec 1.8 also warns (FutureWarning) that ShardedTensor, the
type its sharded tables still are, is deprecated. None of it is something a user of mtlrec can act
on, and it buried the run's own lines. `quiet_sharding` drops those records while the layers are
sharded and silences the ShardedTensor warning for the process (checkpoints meet it later).
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


def ignore_sharded_tensor_deprecation() -> None:
    """TorchRec 1.8's tables are ShardedTensors; its deprecation warning is not the user's to fix."""
    warnings.filterwarnings("ignore", message="Please use DTensor instead", category=FutureWarning)
