"""TorchRec's and FBGEMM's chatter stays off the console and train.log; mtlrec's own lines stay."""

from __future__ import annotations

import json
import logging
import warnings

import pytest

pytest.importorskip("torchrec", reason="needs TorchRec (bash scripts/install_torchrec.sh)")

from helpers.cli import env, mtlrec  # noqa: E402
from mtlrec.training.torchrec_quiet import (  # noqa: E402
    FX_TRACE_LOGGER,
    ignore_fx_tracing_note,
    quiet_import,
    quiet_sharding,
)


class _Keep(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_quiet_sharding_drops_the_libraries_chatter_and_keeps_the_rest():
    root = logging.getLogger()
    keep, level = _Keep(), root.level
    root.addHandler(keep)
    root.setLevel(logging.INFO)
    try:
        # the outer block records every warning (and undoes the filter quiet_sharding adds)
        with warnings.catch_warnings(record=True) as seen, quiet_sharding():
            warnings.simplefilter("always", UserWarning)
            warnings.warn("a warning of mtlrec's own", UserWarning, stacklevel=1)
            logging.info("[TBE=1] SplitTableBatchedEmbeddingBagsCodegen API: V2")  # FBGEMM's way
            logging.getLogger("torchrec.distributed.planner.x").warning("a storage hint")
            logging.getLogger("torchrec.distributed.planner.x").error("a planner error")
            logging.getLogger("mtlrec.training.x").info("torchrec: table_0 table_wise")
            logging.warning("a root warning")
            warnings.warn(
                "Please use DTensor instead and we are deprecating", FutureWarning, stacklevel=1
            )
        logging.info("after the block: kept")
    finally:
        root.removeHandler(keep)
        root.setLevel(level)
    assert keep.messages == [
        "a planner error",
        "torchrec: table_0 table_wise",
        "a root warning",
        "after the block: kept",
    ]
    assert [str(w.message) for w in seen] == ["a warning of mtlrec's own"]


@pytest.mark.slow  # a real `mtlrec train` process
def test_quiet_import_drops_fbgemm_s_load_lines_and_the_fx_note_only():
    root, fx = logging.getLogger(), logging.getLogger(FX_TRACE_LOGGER)
    keep, level, fx_kept = _Keep(), root.level, _Keep()
    root.addHandler(keep)
    root.setLevel(logging.INFO)
    fx.addHandler(fx_kept)  # torch's loggers may not propagate to the root
    try:
        with quiet_import():
            logging.info("Successfully loaded: 'fbgemm_gpu_config.so'")  # FBGEMM's way
            logging.warning("a root warning at import")
            logging.getLogger("mtlrec.x").info("mtlrec's own line")
        logging.info("after the import: kept")
        ignore_fx_tracing_note()
        ignore_fx_tracing_note()  # once is enough: no second filter
        assert sum(type(f).__name__ == "_FxTracingNote" for f in fx.filters) == 1
        fx.warning("is_fx_tracing will return true for both fx.symbolic_trace and torch.export.")
        fx.warning("another torch.fx warning")
    finally:
        root.removeHandler(keep)
        root.setLevel(level)
        fx.removeHandler(fx_kept)
    assert keep.messages[:3] == [
        "a root warning at import",
        "mtlrec's own line",
        "after the import: kept",
    ]
    assert fx_kept.messages == ["another torch.fx warning"]


def test_a_torchrec_run_prints_no_library_chatter(tmp_path):
    """The real command: FBGEMM's per-table argument dumps (several KB a line), the planner's
    INFO/WARNING lines and TorchRec's FutureWarnings used to fill the console; the plan line stays.
    PYTHONHASHSEED=2: a seed under which TorchRec's planner chose column_wise before mtlrec fixed
    its tie order (torchrec_plan.py), so the plan line is the same under every seed."""
    proc = mtlrec(
        "train",
        "trainer.embedding_backend=torchrec",
        "trainer.epochs=1",
        "dataset.num_rows=4000",
        "trainer.num_threads=1",
        f"hydra.run.dir={tmp_path / 'run'}",
        cwd=tmp_path,
        timeout=300,
        # its own data dir: the suite's shared one may hold the default dataset prepared by
        # another test with other sizes (a tiny table the planner replicates: another plan line)
        env=env(MTLREC_DATA_DIR=str(tmp_path / "data"), PYTHONHASHSEED="2"),
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout + proc.stderr
    library_lines = (
        "[TBE=",  # FBGEMM's per-table arguments
        "EmbeddingPerfEstimatorFactory",  # the planner's INFO
        "known issue",
        "FutureWarning",
        "Successfully loaded",  # FBGEMM's import, one line per library
        "is_fx_tracing",  # torch's note at TorchRec's first forward
    )
    for chatter in library_lines:
        assert chatter not in out, chatter
    log = (tmp_path / "run" / "train.log").read_text()
    assert "[TBE=" not in log
    plan = json.loads((tmp_path / "run" / "sharding_plan.json").read_text())
    assert list(plan["tables"]) == ["table_0"]  # one embedding size: one table
    table = plan["tables"]["table_0"]
    assert (table["sharding_type"], table["ranks"], table["compute_kernel"]) == (
        "table_wise",  # of equal costs, the whole table (torchrec_plan.TIE_ORDER)
        [0],
        "fused",
    )
    plan_lines = [line for line in log.splitlines() if "torchrec: table_" in line]
    assert len(plan_lines) == 1  # mtlrec's own line, once
    assert plan_lines[0].endswith("torchrec: table_0 table_wise on rank(s) [0] (fused kernel)")
