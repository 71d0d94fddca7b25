"""TorchRec's and FBGEMM's chatter stays off the console and train.log; mtlrec's own lines stay."""

from __future__ import annotations

import json
import logging
import warnings

import pytest

pytest.importorskip("torchrec", reason="needs TorchRec (bash scripts/install_torchrec.sh)")

from helpers.cli import env, mtlrec  # noqa: E402
from mtlrec.training.torchrec_quiet import quiet_sharding  # noqa: E402


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
    for chatter in ("[TBE=", "EmbeddingPerfEstimatorFactory", "known issue", "FutureWarning"):
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
