"""One process' TorchRec fused tables in checkpoints as base + delta files
(mtlrec/training/torchrec_table_files.py): the checkpoints hold the changed rows only, assemble
to what a run keeping the tables inside last.pt holds, and a run stopped mid-epoch resumes from
them exactly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("torchrec", reason="needs TorchRec (bash scripts/install_torchrec.sh)")

from conftest import TINY, compose_train  # noqa: E402
from helpers.stops import stop_then_resume  # noqa: E402
from mtlrec.models import seeded_init  # noqa: E402
from mtlrec.training.checkpoint import LAST, load_checkpoint  # noqa: E402
from mtlrec.training.table_files import TABLES_KEY  # noqa: E402

# 3 epochs, no early stop: epoch 1 is the best (checked), 2 and 3 change rows after it
TORCHREC = [*TINY, "trainer.embedding_backend=torchrec", "trainer.batch_size=128",
            "trainer.epochs=3", "trainer.patience=null"]  # fmt: skip
STEPS_PER_EPOCH = 21  # 2800 train rows / 128, the 112-row tail merged into the last step
FILES = ["checkpoint.table_files_min_rows=0", "checkpoint.every_n_steps=5"]
# (optimizer, lr, seeded): a momentum per row, its table drawn from the seeded init; a momentum
# per value, not seeded (each lr: epoch 1 the best of 3)
OPTIMIZERS = [("rowwise_adagrad", 0.03, True), ("adagrad", 0.01, False)]


@pytest.fixture(scope="module")
def whole(tmp_path_factory):
    """whole(optimizer, lr, seeded): the uninterrupted run keeping its tables inside last.pt."""
    from mtlrec.experiment import run

    runs: dict[tuple[str, float, bool], Path] = {}

    def get(optimizer: str, lr: float, seeded: bool) -> Path:
        if (optimizer, lr, seeded) not in runs:
            run_dir = runs[optimizer, lr, seeded] = tmp_path_factory.mktemp("whole") / "run"
            with pytest.MonkeyPatch.context() as patch:
                patch.setattr(seeded_init, "SEEDED_FROM_ROWS", 0 if seeded else 10**9)
                config = [*settings(optimizer, lr), "checkpoint.table_files_min_rows=null"]
                run(compose_train(config), run_dir)
        return runs[optimizer, lr, seeded]

    return get


def settings(optimizer: str, lr: float) -> list[str]:
    return [*TORCHREC, f"trainer.embedding_optimizer={optimizer}", f"trainer.lr={lr}"]


def assert_same_run(run_dir: Path, ref_dir: Path) -> None:
    """Same metrics to the bit; last.pt and best.pt (assembled) hold the same tables and fused
    state as the whole run's."""
    got, ref = (json.loads((d / "metrics.json").read_text()) for d in (run_dir, ref_dir))
    assert got["status"] == "completed" and got["metrics"] == ref["metrics"]
    assert got["best_epoch"] == ref["best_epoch"] == 1 and got["epochs_run"] == 3
    for name in (LAST, "best.pt"):
        a, b = (load_checkpoint(d / "checkpoints" / name) for d in (run_dir, ref_dir))
        assert a["model_state"].keys() == b["model_state"].keys()
        for k, v in b["model_state"].items():
            assert torch.equal(a["model_state"][k], v), (name, k)
        best = a["train_state"]["best_state"], b["train_state"]["best_state"]
        assert best[0].keys() == best[1].keys()
        for k, v in best[1].items():
            assert torch.equal(best[0][k], v), (name, "best_state", k)
        fused = a["optimizer_state"]["fused_tables"], b["optimizer_state"]["fused_tables"]
        assert fused[0].keys() == fused[1].keys() and fused[1]
        for k, v in fused[1].items():
            assert torch.equal(fused[0][k], v), (name, k)


@pytest.mark.parametrize(("optimizer", "lr", "seeded"), OPTIMIZERS)
def test_checkpoints_write_the_changed_rows_and_assemble_to_the_whole_tables(
    tmp_path, whole, best_loads, monkeypatch, optimizer, lr, seeded
):
    """...and the best weights are the best epoch's files, not a copy: the end of the run reads
    back the rows changed since epoch 1."""
    from mtlrec.experiment import run

    run_dir = tmp_path / "run"
    monkeypatch.setattr(seeded_init, "SEEDED_FROM_ROWS", 0 if seeded else 10**9)
    run(compose_train([*settings(optimizer, lr), *FILES]), run_dir)
    assert_same_run(run_dir, whole(optimizer, lr, seeded))
    raw = torch.load(run_dir / "checkpoints" / LAST, weights_only=True)
    chain = raw[TABLES_KEY]["chains"]["last"]
    # a seeded table's chain starts at its init (no file), else at a base file
    assert chain[0]["kind"] == ("init" if seeded else "base") and [
        e["kind"] for e in chain[1:]
    ] == ["delta"] * (len(chain) - 1)
    table_rows = sum(list(s)[0] for n, s in raw[TABLES_KEY]["shapes"].items() if "model_state" in n)
    assert len(chain) > 3 and all(0 < e["rows"] < table_rows for e in chain[1:])
    assert (chain[0]["file"] is None) == seeded
    refs = [
        v
        for v in [*raw["model_state"].values(), *raw["optimizer_state"]["fused_tables"].values()]
        if isinstance(v, dict)
    ]
    assert len(refs) >= 2  # the table and its momentum are references, not tensors
    end = best_loads[0]  # this run's (the whole run, when made here, comes after)
    assert end["held"] == end["keys"] and len(end["keys"]) >= 1  # no table copied
    assert 0 < end["rows"] < end["table_rows"]


def test_a_run_stopped_mid_epoch_resumes_exactly_from_table_files(
    tmp_path, whole, best_loads, monkeypatch
):
    """Stopped in epoch 2 (its best weights: references to epoch 1's files), resumed."""
    from mtlrec.experiment import run

    run_dir = tmp_path / "run"
    monkeypatch.setattr(seeded_init, "SEEDED_FROM_ROWS", 0)
    # no new base (the stop's extra checkpoint would bring one): the end reads the changed rows
    monkeypatch.setattr("mtlrec.training.table_files.COMPACT_FRACTION", 9.0)
    config = [*settings("rowwise_adagrad", 0.03), *FILES]
    stop_then_resume(
        monkeypatch,
        run,
        compose_train(config),
        compose_train([*config, f"resume={run_dir}"]),
        run_dir,
        k=STEPS_PER_EPOCH + 7,
    )
    assert_same_run(run_dir, whole("rowwise_adagrad", 0.03, True))
    end = best_loads[0]
    assert end["held"] == end["keys"] and 0 < end["rows"] < end["table_rows"]
