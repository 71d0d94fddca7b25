"""trainer.keep_best_per_task and trainer.early_stopping=all_tasks: each task's own best epoch,
its checkpoint, its test metrics with its own weights, and stopping once every task stalled."""

from __future__ import annotations

import json
import math

import pytest

from mtlrec.data.spec import TaskSpec
from mtlrec.training.metrics import EvalTarget
from mtlrec.training.per_task import PerTaskBest


def targets() -> list[EvalTarget]:
    return [
        EvalTarget(TaskSpec("ctr", "click"), in_mean=True),
        EvalTarget(TaskSpec("cvr", "conversion", where="click"), in_mean=True),
        EvalTarget(TaskSpec("ctcvr", "conversion")),  # a model output, not a dataset task
        EvalTarget(TaskSpec("cvr", "conversion_if_clicked"), "_entire"),
    ]


def test_each_task_has_its_own_best_epoch_and_all_tasks_stop_when_every_one_stalled():
    best = PerTaskBest(targets(), patience=2)
    assert best.tasks == ["ctr", "cvr"]
    rows = [
        {"epoch": 1, "val/ctr_auc": 0.70, "val/cvr_auc": 0.60},
        {"epoch": 2, "val/ctr_auc": 0.72, "val/cvr_auc": 0.59},
        {"epoch": 3, "val/ctr_auc": 0.71, "val/cvr_auc": 0.58},
        {"epoch": 4, "val/ctr_auc": 0.73, "val/cvr_auc": 0.57},
    ]
    improved = [best.update(r["epoch"], r) for r in rows]
    assert improved == [["ctr", "cvr"], ["ctr"], [], ["ctr"]]
    assert {t: s["epoch"] for t, s in best.summary().items()} == {"ctr": 4, "cvr": 1}
    assert not best.all_stalled  # cvr stalled for 3 epochs, ctr just improved
    best.update(5, {"val/ctr_auc": 0.70, "val/cvr_auc": 0.55})
    best.update(6, {"val/ctr_auc": 0.70, "val/cvr_auc": math.nan})
    assert best.all_stalled
    replayed = PerTaskBest(targets(), patience=2)
    replayed.replay([*rows, {"epoch": 5, "val/ctr_auc": 0.70, "val/cvr_auc": 0.55}])
    assert replayed.summary()["ctr"]["epoch"] == 4 and replayed.improved == []


@pytest.mark.parametrize("ema", [[], ["trainer.ema_decay=0.9"]], ids=["weights", "ema"])
def test_keep_best_per_task_writes_checkpoints_and_the_second_protocol(train_tiny, capsys, ema):
    """best_<task>.pt holds the weights the task's test metrics were computed with (with
    trainer.ema_decay: the averaged ones, as best.pt)."""
    run_dir, info = train_tiny(
        [
            "trainer.keep_best_per_task=true",
            "trainer.epochs=3",
            "trainer.patience=null",
            "trainer.lr=0.01",
            *ema,
        ]
    )
    per_task = info["per_task_best"]
    assert per_task["protocol"].startswith("per_task_best")
    history = [json.loads(json.dumps(r)) for r in _history(run_dir)]
    for task in ("ctr", "cvr"):
        values = [r[f"val/{task}_auc"] for r in history]
        epoch = values.index(max(values)) + 1
        got = per_task["tasks"][task]
        assert got["epoch"] == epoch and got["watched"] == f"val/{task}_auc"
        assert got["metrics"][f"val/{task}_auc"] == pytest.approx(max(values))
        assert (run_dir / "checkpoints" / f"best_{task}.pt").is_file()
        # evaluate --checkpoint best_<task> gives the test metrics metrics.json recorded
        from mtlrec.cli import run

        capsys.readouterr()
        assert run(["evaluate", str(run_dir), "--checkpoint", f"best_{task}", "--json"]) == 0
        evaluated = json.loads(capsys.readouterr().out)
        assert got["metrics"][f"test/{task}_auc"] == pytest.approx(
            evaluated[f"test/{task}_auc"], abs=1e-9
        )
    # The monitored protocol is untouched: its test metrics are those of best.pt.
    from mtlrec.inference import evaluate

    assert info["metrics"]["test/mean_auc"] == pytest.approx(
        evaluate(run_dir)["test/mean_auc"], abs=1e-9
    )


def _history(run_dir):
    import csv

    with open(run_dir / "history.csv") as f:
        return [{k: float(v) if v else math.nan for k, v in r.items()} for r in csv.DictReader(f)]


def test_the_trainer_stops_on_the_rule_early_stopping_names():
    from mtlrec.training.config import TrainerConfig
    from mtlrec.training.monitoring import EarlyStopping
    from mtlrec.training.trainer import Trainer

    trainer = Trainer.__new__(Trainer)  # only the stopping rule is exercised
    trainer.stopper = EarlyStopping("max", 1)
    trainer.stopper.update(1, 0.5)
    trainer.stopper.update(2, 0.4)  # the monitored metric stalled
    trainer.per_task = PerTaskBest(targets(), patience=1)
    trainer.per_task.update(1, {"val/ctr_auc": 0.5, "val/cvr_auc": 0.5})
    trainer.per_task.update(2, {"val/ctr_auc": 0.6, "val/cvr_auc": 0.4})  # ctr still improves
    trainer.cfg = TrainerConfig(early_stopping="monitor")
    assert trainer.should_stop
    trainer.cfg = TrainerConfig(early_stopping="all_tasks")
    assert not trainer.should_stop
    trainer.per_task.update(3, {"val/ctr_auc": 0.6, "val/cvr_auc": 0.4})
    assert trainer.should_stop


def test_a_resumed_run_has_the_per_task_results_of_the_uninterrupted_one(tmp_path, monkeypatch):
    from conftest import TINY, compose_train, run_training
    from helpers.stops import stop_then_resume
    from mtlrec.experiment import run

    options = ["trainer.keep_best_per_task=true", "trainer.epochs=3", "trainer.patience=null"]
    _, straight = run_training(tmp_path, options, name="straight")
    run_dir = tmp_path / "resumed"
    config, resumed = compose_train([*TINY, *options]), [*TINY, *options, f"resume={run_dir}"]
    # k=15: mid epoch 2 (10 steps per epoch)
    stop_then_resume(monkeypatch, run, config, compose_train(resumed), run_dir, k=15)
    resumed = json.loads((run_dir / "metrics.json").read_text())
    assert resumed["per_task_best"] == straight["per_task_best"]
