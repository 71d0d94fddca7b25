"""The best weights of tables checkpointed as table files are kept as those files, not as a copy
in memory (mtlrec/training/best_files.py): the run's test metrics and checkpoints equal those
of the same run keeping the copy (`checkpoint.table_files_min_rows=null`) to the bit."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import TINY, compose_train
from helpers.stops import StopAfter
from mtlrec.training import best_files
from mtlrec.training.checkpoint import LAST, TrainState, load_checkpoint, make_payload
from mtlrec.training.signals import StopRequest, TrainingInterrupted

STEPS = 87  # an epoch of 4000 rows' train split in batches of 32
# 3 epochs, no early stop: epoch 1 is the best (checked), epochs 2 and 3 change rows after it
SPARSE = [*TINY, "trainer.epochs=3", "trainer.batch_size=32", "trainer.patience=null",
          "trainer.embedding_optimizer=sparse_adam"]  # fmt: skip
FILES = [*SPARSE, "checkpoint.table_files_min_rows=0", "checkpoint.every_n_steps=16"]


@pytest.fixture(scope="module")
def copied(tmp_path_factory) -> Path:
    """The run keeping the best weights as a copy in memory (its tables inside last.pt)."""
    from mtlrec.experiment import run

    run_dir = tmp_path_factory.mktemp("copied") / "run"
    run(compose_train([*SPARSE, "checkpoint.table_files_min_rows=null"]), run_dir)
    return run_dir


@pytest.fixture
def loads(monkeypatch) -> list[dict]:
    """What each fit's end loads: the keys held as placeholders, the keys the files hold, the
    rows restored from the files and the rows of those tables."""
    seen: list[dict] = []
    load, restore = best_files.load, best_files.BestFiles.restore

    def spy_load(model, best, files):
        seen.append({"held": best_files.by_files(best), "keys": files.keys if files else None})
        load(model, best, files)

    def spy_restore(self, keys):
        seen[-1]["rows"] = restore(self, keys)
        seen[-1]["table_rows"] = sum(self.weights[k][1].shape[0] for k in keys)
        return seen[-1]["rows"]

    monkeypatch.setattr(best_files, "load", spy_load)
    monkeypatch.setattr(best_files.BestFiles, "restore", spy_restore)
    return seen


def assert_same_run(run_dir: Path, ref_dir: Path) -> None:
    got, ref = (json.loads((d / "metrics.json").read_text()) for d in (run_dir, ref_dir))
    assert got["status"] == "completed" and got["metrics"] == ref["metrics"]
    assert got["best_epoch"] == ref["best_epoch"] == 1 and got["epochs_run"] == 3
    for name in ("best.pt", LAST):
        a, b = (load_checkpoint(d / "checkpoints" / name) for d in (run_dir, ref_dir))
        for part in ("model_state", "train_state"):
            x = a[part]["best_state"] if part == "train_state" else a[part]
            y = b[part]["best_state"] if part == "train_state" else b[part]
            assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x), name


@pytest.mark.parametrize("compact", [False, True], ids=["deltas", "new-base-since-best"])
def test_best_weights_restored_from_table_files_equal_the_copy_in_memory(
    tmp_path, copied, loads, monkeypatch, compact
):
    """Epoch 1 is the best; at the end, only the rows changed since its checkpoint are read
    back from its files. After a new base since the best epoch, every row is read back."""
    from mtlrec.experiment import run

    # every checkpoint a base, or none but the first
    monkeypatch.setattr("mtlrec.training.table_files.COMPACT_FRACTION", 0.0 if compact else 9.0)
    run(compose_train(FILES), tmp_path / "run")
    assert_same_run(tmp_path / "run", copied)
    [end] = loads
    assert end["held"] == end["keys"] and len(end["keys"]) >= 1  # no table copied
    if compact:
        assert end["rows"] == end["table_rows"]
    else:
        assert 0 < end["rows"] < end["table_rows"]


def test_a_run_resumed_after_its_best_epoch_restores_the_best_weights_from_the_files(
    tmp_path, copied, loads, monkeypatch
):
    """Stopped in epoch 3 (its last checkpoint's best weights: references to epoch 1's files),
    resumed: the resumed process holds them as the files too, and ends as the copying run."""
    from mtlrec.experiment import run

    monkeypatch.setattr("mtlrec.training.table_files.COMPACT_FRACTION", 9.0)  # one base
    monkeypatch.setattr(StopAfter, "k", 2 * STEPS + 20)
    monkeypatch.setattr("mtlrec.experiment.StopRequest", StopAfter)
    run_dir = tmp_path / "run"
    with pytest.raises(TrainingInterrupted):
        run(compose_train(FILES), run_dir)
    raw = torch.load(run_dir / "checkpoints" / LAST, weights_only=True)
    state = raw["train_state"]
    assert raw["table_files"]["best"] == "best" and (state["epoch"], state["step"]) == (3, 18)
    monkeypatch.setattr("mtlrec.experiment.StopRequest", StopRequest)
    run(compose_train([*FILES, f"resume={run_dir}"]), run_dir)
    assert_same_run(run_dir, copied)
    [end] = loads
    assert end["held"] == end["keys"] and len(end["keys"]) >= 1
    assert 0 < end["rows"] < end["table_rows"]


def test_a_placeholder_is_never_written_as_weights():
    """A kept best state's placeholder that no table file turns into a reference fails the
    checkpoint's write, loudly: it has no values to store."""
    from torch import nn

    class Spec:  # what make_payload reads of a dataset spec
        def to_dict(self) -> dict:
            return {}

    table = nn.Embedding(10, 4)
    held = best_files.placeholder(table.weight)
    assert held.is_meta and held.shape == (10, 4) and held.dtype == torch.float32
    state = TrainState(1, 0, torch.zeros(1), {}, {}, [], {"weight": held}, 0.0, 0)
    with pytest.raises(NotImplementedError, match="meta"):
        make_payload(table, None, {"model": {"name": "x"}}, Spec(), (), 1, state)  # type: ignore[arg-type]
