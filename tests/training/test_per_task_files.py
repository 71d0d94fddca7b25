"""trainer.keep_best_per_task with tables checkpointed as table files: each task's best weights
of those tables are its best epoch's files (training/best_files.py), not a copy in memory per
task, and the per-task results equal those of the same run keeping copies
(`checkpoint.table_files_min_rows=null`) to the bit."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import TINY, compose_train
from helpers.stops import StopAfter
from mtlrec.models import seeded_init
from mtlrec.training import per_task
from mtlrec.training.checkpoint import load_checkpoint
from mtlrec.training.signals import StopRequest, TrainingInterrupted

STEPS = 87  # an epoch of 4000 rows' train split in batches of 32
# 4 epochs at lr 0.001: the monitored best is epoch 3, ctr's own best epoch 2, cvr's 4 (checked),
# so a task's chain is behind the best epoch's and another's ahead of it
PER_TASK = [*TINY, "trainer.epochs=4", "trainer.batch_size=32", "trainer.patience=null",
            "trainer.lr=0.001", "trainer.embedding_optimizer=sparse_adam",
            "trainer.keep_best_per_task=true"]  # fmt: skip
FILES = [*PER_TASK, "checkpoint.table_files_min_rows=0", "checkpoint.every_n_steps=16"]
EPOCHS = {"best": 3, "ctr": 2, "cvr": 4}


@pytest.fixture(scope="module")
def copied(tmp_path_factory) -> Path:
    """The run keeping each task's best weights as a copy in memory (its tables inside
    last.pt), its tables drawn from their own generators as 100k+ row tables are."""
    from mtlrec.experiment import run

    run_dir = tmp_path_factory.mktemp("copied") / "run"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(seeded_init, "SEEDED_FROM_ROWS", 0)
        run(compose_train([*PER_TASK, "checkpoint.table_files_min_rows=null"]), run_dir)
    return run_dir


@pytest.fixture
def put_back(monkeypatch) -> list[bool]:
    """Whether test_per_task left the model with the weights it found (the monitored best's)."""
    seen: list[bool] = []
    tested = per_task.test_per_task

    def spy(trainer, *args):
        before = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
        out = tested(trainer, *args)
        after = trainer.model.state_dict()
        seen.append(
            before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
        )
        return out

    monkeypatch.setattr("mtlrec.experiment.test_per_task", spy)
    return seen


def assert_same_per_task_results(run_dir: Path, ref_dir: Path) -> None:
    got, ref = (json.loads((d / "metrics.json").read_text()) for d in (run_dir, ref_dir))
    assert got["status"] == "completed" and got["metrics"] == ref["metrics"]
    assert got["per_task_best"] == ref["per_task_best"]  # every float to the bit
    epochs = {t: r["epoch"] for t, r in got["per_task_best"]["tasks"].items()}
    assert {"best": got["best_epoch"], **epochs} == EPOCHS
    for task in ("ctr", "cvr"):
        name = f"best_{task}.pt"
        a, b = (
            load_checkpoint(d / "checkpoints" / name)["model_state"] for d in (run_dir, ref_dir)
        )
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name


def chain_files(checkpoint: Path) -> set[str]:
    chains = torch.load(checkpoint, weights_only=True)["table_files"]["chains"]
    return {e["file"] for c in chains.values() for e in c if e["file"]}


@pytest.mark.parametrize("compact", [False, True], ids=["deltas", "new-base-each-checkpoint"])
def test_each_tasks_best_tables_come_from_its_files_as_the_copies_in_memory(
    tmp_path, copied, best_loads, put_back, monkeypatch, compact
):
    """The loads at the end: fit's (the monitored best), ctr's, cvr's, the monitored best's
    again; each holds every table as a placeholder (no copy) and reads back only the rows that
    differ between the chain the tables hold and the one wanted; with a new base at every
    checkpoint, every row, and the task's base file is kept by the clean-up while its
    best_<task>.pt names it."""
    from mtlrec.experiment import run

    monkeypatch.setattr(seeded_init, "SEEDED_FROM_ROWS", 0)
    monkeypatch.setattr("mtlrec.training.table_files.COMPACT_FRACTION", 0.0 if compact else 9.0)
    run_dir = tmp_path / "run"
    run(compose_train(FILES), run_dir)
    assert_same_per_task_results(run_dir, copied)
    assert put_back == [True]
    loads = best_loads[:4]  # this run's (the reference run, made here or before, comes after)
    assert [load["chain"] is None for load in loads] == [True, False, False, True]
    for load in loads:
        assert load["held"] == load["keys"] and len(load["keys"]) >= 1  # no table copied
        if compact:
            assert load["rows"] == load["table_rows"]
        else:
            assert 0 < load["rows"] < load["table_rows"]
    checkpoints = run_dir / "checkpoints"
    others = set().union(
        *(chain_files(p) for p in checkpoints.glob("*.pt") if p.name != "best_ctr.pt")
    )
    only_ctr = chain_files(checkpoints / "best_ctr.pt") - others
    assert bool(only_ctr) == compact  # epoch 2's base: no other checkpoint names it
    assert all((checkpoints / "tables" / f).is_file() for f in only_ctr)


def stopped_in_epoch_3(tmp_path: Path, monkeypatch, compact_fraction: float) -> Path:
    """The FILES run (its tables drawn as 100k+ row tables are) stopped 20 steps into epoch 3,
    a new base when the deltas exceed `compact_fraction` of the tables; its run dir."""
    from mtlrec.experiment import run

    monkeypatch.setattr(seeded_init, "SEEDED_FROM_ROWS", 0)
    monkeypatch.setattr("mtlrec.training.table_files.COMPACT_FRACTION", compact_fraction)
    monkeypatch.setattr(StopAfter, "k", 2 * STEPS + 20)
    monkeypatch.setattr("mtlrec.experiment.StopRequest", StopAfter)
    run_dir = tmp_path / "run"
    with pytest.raises(TrainingInterrupted):
        run(compose_train(FILES), run_dir)
    monkeypatch.setattr("mtlrec.experiment.StopRequest", StopRequest)
    return run_dir


def test_a_resumed_run_reads_a_tasks_best_tables_from_its_checkpoints_files(
    tmp_path, copied, best_loads, monkeypatch
):
    """Stopped in epoch 3 and resumed: ctr's best epoch (2) comes from best_ctr.pt without
    assembling it (its tables: placeholders and its chain of files), cvr's (4) from memory;
    the results equal the uninterrupted copying run's."""
    from mtlrec.experiment import run

    run_dir = stopped_in_epoch_3(tmp_path, monkeypatch, compact_fraction=9.0)

    def whole(path, *args, **kwargs):  # best_<task>.pt loaded whole: its tables copied
        raise AssertionError(f"{path} assembled")

    monkeypatch.setattr(per_task, "load_checkpoint", whole)
    run(compose_train([*FILES, f"resume={run_dir}"]), run_dir)
    assert_same_per_task_results(run_dir, copied)
    ctr = best_loads[1]
    assert ctr["chain"] is not None and ctr["held"] == ctr["keys"] and len(ctr["keys"]) >= 1
    assert 0 < ctr["rows"] < ctr["table_rows"]


def test_a_tasks_file_the_resume_did_not_check_is_checked_when_read(tmp_path, monkeypatch):
    """With a new base at every checkpoint, ctr's best epoch (2) has a file that neither the
    resumed last.pt's chain nor the best epoch's (1, then) names: the resume never read it, so it
    is checked against its SHA-256 when ctr's weights are read; a corrupt one is one line."""
    from mtlrec.errors import MtlrecError
    from mtlrec.experiment import run

    run_dir = stopped_in_epoch_3(tmp_path, monkeypatch, compact_fraction=0.0)
    checkpoints = run_dir / "checkpoints"
    others = [p for p in checkpoints.glob("*.pt") if p.name != "best_ctr.pt"]
    (only_ctr,) = chain_files(checkpoints / "best_ctr.pt") - set().union(*map(chain_files, others))
    file = checkpoints / "tables" / only_ctr
    data = bytearray(file.read_bytes())
    data[-100] ^= 0xFF  # one flipped byte
    file.write_bytes(bytes(data))
    with pytest.raises(MtlrecError) as e:
        run(compose_train([*FILES, f"resume={run_dir}"]), run_dir)
    assert str(e.value) == (
        f"{checkpoints / 'best_ctr.pt'}: table file {file} does not match its SHA-256 in the "
        "checkpoint (the file is corrupt); use an older checkpoint"
    )


def test_only_keep_best_per_task_keeps_each_tasks_weights():
    """early_stopping=all_tasks without keep_best_per_task needs each task's best epoch, not its
    weights: none are kept."""
    from torch import nn

    from mtlrec.data.spec import TaskSpec
    from mtlrec.training.metrics import EvalTarget

    model = nn.Linear(3, 2)
    tasks = [EvalTarget(TaskSpec(t, t), in_mean=True) for t in ("ctr", "cvr")]
    for keeps, kept in ((True, {"ctr", "cvr"}), (False, set())):
        best = per_task.PerTaskBest(tasks, patience=2, keeps=keeps)
        best.update(1, {"val/ctr_auc": 0.7, "val/cvr_auc": 0.6})
        best.keep(model)
        assert set(best.states) == kept
        assert all(torch.equal(s["weight"], model.weight) for s in best.states.values())


def test_a_missing_best_task_checkpoint_of_before_a_resume_says_what_to_do(tmp_path):
    """A task's best epoch came before the resume and its best_<task>.pt was removed: its test
    cannot be made; one line naming the file, the task and the epoch, and what to do (the run's
    last.pt is written: a resume after the file is back goes on to the tests)."""
    from mtlrec.data.spec import TaskSpec
    from mtlrec.errors import MtlrecError
    from mtlrec.training.metrics import EvalTarget

    best = per_task.PerTaskBest([EvalTarget(TaskSpec("ctr", "ctr"), in_mean=True)], patience=2)
    best.replay([{"epoch": 1, "val/ctr_auc": 0.7}, {"epoch": 2, "val/ctr_auc": 0.6}])
    with pytest.raises(MtlrecError) as e:
        per_task.task_weights(best, "ctr", tmp_path, None)
    assert str(e.value) == (
        f"{tmp_path / 'best_ctr.pt'}: missing, so ctr cannot be tested with the weights of its "
        "best epoch (1, before the resume); put the file back (from a copy of the run dir) and "
        "resume the run again: it goes on to the tests"
    )


def test_torchrec_fused_tables_of_each_task_come_from_its_files(tmp_path, best_loads, monkeypatch):
    """One process' TorchRec tables (training/torchrec_table_files.py) the same way: ctr's own
    best epoch (2) is before the monitored best (3); the results equal the run keeping the
    tables inside last.pt and the copies in memory."""
    pytest.importorskip("torchrec", reason="needs TorchRec (bash scripts/install_torchrec.sh)")
    from mtlrec.experiment import run

    monkeypatch.setattr(seeded_init, "SEEDED_FROM_ROWS", 0)
    options = [*TINY, "trainer.embedding_backend=torchrec", "trainer.batch_size=128",
               "trainer.epochs=3", "trainer.patience=null", "trainer.lr=0.01",
               "trainer.embedding_optimizer=rowwise_adagrad", "trainer.keep_best_per_task=true",
               "checkpoint.every_n_steps=5"]  # fmt: skip
    run(compose_train([*options, "checkpoint.table_files_min_rows=0"]), tmp_path / "files")
    loads = best_loads[:4]
    run(compose_train([*options, "checkpoint.table_files_min_rows=null"]), tmp_path / "whole")
    got, ref = (json.loads((tmp_path / d / "metrics.json").read_text()) for d in ("files", "whole"))
    assert got["metrics"] == ref["metrics"] and got["per_task_best"] == ref["per_task_best"]
    epochs = {t: r["epoch"] for t, r in got["per_task_best"]["tasks"].items()}
    assert (got["best_epoch"], epochs) == (3, {"ctr": 2, "cvr": 3})
    for task in ("ctr", "cvr"):
        paths = (tmp_path / d / "checkpoints" / f"best_{task}.pt" for d in ("files", "whole"))
        a, b = (load_checkpoint(p)["model_state"] for p in paths)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), task
    assert [load["chain"] is None for load in loads] == [True, False, False, True]
    assert all(load["held"] == load["keys"] and len(load["keys"]) >= 1 for load in loads)
    assert 0 < loads[1]["rows"] < loads[1]["table_rows"]  # ctr: the rows epoch 3 changed
