"""The fit loop's numbers: monitor direction, tail batches, embedding L2, per-task clipping, losses."""

from __future__ import annotations

import csv
import logging

import pytest
import torch

from conftest import compose_train
from mtlrec.data.ccp_generator import dataset_spec
from mtlrec.data.loader import Batch
from mtlrec.data.spec import TaskSpec
from mtlrec.models import build_model
from mtlrec.settings import TrainerConfig
from mtlrec.training.batches import EpochPlan
from mtlrec.training.metrics import eval_targets
from mtlrec.training.monitoring import resolve_monitor
from mtlrec.training.objective import embedding_l2_penalty
from mtlrec.training.trainer import Trainer


def history(run_dir):
    with open(run_dir / "history.csv") as f:
        return [
            {k: float(v) for k, v in r.items() if v not in ("", None)} for r in csv.DictReader(f)
        ]


@pytest.mark.parametrize(
    "monitor, mode",
    [
        ("val/cvr_auc_entire", "max"),
        ("val/ctr_auc", "max"),
        ("val/mean_logloss", "min"),
        ("val/cvr_logloss_entire", "min"),
        ("val/loss", "min"),
        ("val/ctr_loss", "min"),
    ],
)
def test_monitor_direction_comes_from_the_metric_registry(monitor, mode):
    ctr = (TaskSpec("ctr", "click"),)
    assert resolve_monitor(TrainerConfig(monitor=monitor), ctr) == (monitor, mode)


def test_monitor_cvr_auc_entire_keeps_the_highest_epoch(train_tiny):
    """The old last-token guess read `entire` as a loss and kept the LOWEST-AUC epoch."""
    overrides = [
        "model=mmoe",
        "trainer.epochs=3",
        "trainer.patience=null",
        "trainer.monitor=val/cvr_auc_entire",
    ]
    run_dir, metrics = train_tiny(overrides)
    values = [r["val/cvr_auc_entire"] for r in history(run_dir)]
    assert len(set(values)) == 3  # epochs differ, so max and min pick different epochs
    assert metrics["monitor_mode"] == "max"
    assert metrics["best_epoch"] == 1 + values.index(max(values))
    assert metrics["best_value"] == max(values)


def test_a_monitor_the_run_does_not_produce_is_one_line_before_epoch_1(train_tiny):
    from mtlrec.errors import MtlrecError

    with pytest.raises(MtlrecError) as info:  # cvr_base scores no ctr
        train_tiny(["model=cvr_base", "trainer.monitor=val/ctr_auc"])
    message = str(info.value)
    assert message.startswith(
        "trainer.monitor='val/ctr_auc': this run produces no such validation metric; choose one of ["
    )
    assert "'val/cvr_auc'" in message and "\n" not in message


@pytest.mark.parametrize(
    "tail, steps, last, trained",
    [
        ("merge", 9, (2488, 2800), 2800),
        ("drop", 9, (2488, 2799), 2799),
        ("keep", 10, (2799, 2800), 2800),
    ],
)
def test_epoch_plan_merges_or_drops_the_short_tail(tail, steps, last, trained):
    plan = EpochPlan(2800, 311, tail)  # 9 * 311 + 1: a tail batch of one row
    assert plan.steps == steps
    assert plan.bounds(steps - 1) == last
    assert plan.trained_rows == trained
    covered = [i for s in range(plan.steps) for i in range(*plan.bounds(s))]
    assert covered == list(range(trained))  # every row once, in order
    assert EpochPlan(100, 256, tail).steps == 1 and EpochPlan(100, 256, tail).bounds(0) == (0, 100)


@pytest.mark.parametrize("tail", ["merge", "drop"])
def test_batch_norm_trains_when_the_last_batch_has_one_row(train_tiny, tail):
    """2,800 train rows in batches of 311 leave one row: batch norm refused it before."""
    run_dir, metrics = train_tiny(
        [
            "model=mmoe",
            "model.batch_norm=true",
            "trainer.batch_size=311",
            "trainer.epochs=1",
            f"trainer.tail_batch={tail}",
        ],
        name=tail,
    )
    assert metrics["status"] == "completed"
    assert 0.0 < metrics["metrics"]["test/ctr_auc"] < 1.0


def _toy_trainer(model_name: str, cfg: TrainerConfig, seed: int = 0):
    spec = dataset_spec(1000, 0)
    torch.manual_seed(seed)
    model_cfg = dict(compose_train([f"model={model_name}"]).model)
    model, tasks = build_model(model_cfg, spec, spec.select_tasks(None))
    targets = eval_targets(tasks, model.output_types, spec)
    return spec, Trainer(model, spec, tasks, targets, cfg, torch.device("cpu"), 0)


def _batch(spec, n: int, seed: int, half_vocab: bool = False) -> Batch:
    g = torch.Generator().manual_seed(seed)
    cols = []
    for f, offset in zip(spec.sparse, spec.field_offsets, strict=True):
        high = max(f.vocab_size // 2, 1) if half_vocab else f.vocab_size
        cols.append(torch.randint(0, high, (n,), generator=g) + offset)
    sparse = torch.stack(cols, 1)
    dense = torch.randn(n, len(spec.dense), generator=g)
    click = (torch.rand(n, generator=g) < 0.4).float()
    conv = click * (torch.rand(n, generator=g) < 0.5).float()
    labels = torch.stack([click, conv, *[conv] * (len(spec.labels) - 2)], 1)
    return Batch(sparse, dense, labels)


def test_embedding_l2_is_a_penalty_on_the_rows_a_batch_uses():
    cfg = TrainerConfig(embedding_l2=1e-2, weight_decay=0.0, lr=1e-2)
    spec, trainer = _toy_trainer("mmoe", cfg)
    table = trainer.model.embedding.tables[0].weight
    batch = _batch(spec, 64, seed=1, half_vocab=True)
    used = torch.zeros(table.shape[0], dtype=torch.bool)
    used[batch.sparse.reshape(-1)] = True
    expected = table.detach()[used].pow(2).sum()
    assert embedding_l2_penalty(trainer.model, batch.sparse).item() == pytest.approx(
        expected.item(), rel=1e-6
    )
    before = table.detach().clone()
    for _ in range(3):
        trainer.step(batch)
    after = table.detach()
    assert torch.equal(after[~used], before[~used])  # rows no batch used did not move (Adam)
    assert not torch.equal(after[used], before[used])


def test_single_task_with_clipping_keeps_the_tasks_independent():
    """Per-task-network clipping: CVR labels never move the CTR network (joint clipping did)."""
    cfg = TrainerConfig(grad_clip_norm=0.05, lr=1e-2)
    predictions = []
    for flip in (False, True):
        spec, trainer = _toy_trainer("single_task", cfg)
        assert trainer.clip_groups is not None
        for s in range(4):
            batch = _batch(spec, 128, seed=10 + s)
            if flip:  # other conversion labels, same clicks
                batch.labels[:, 1] = batch.labels[:, 0] * (1 - batch.labels[:, 1])
            trainer.step(batch)
        trainer.model.eval()
        probe = _batch(spec, 256, seed=99)
        with torch.no_grad():
            predictions.append(trainer.model(probe.sparse, probe.dense))
    plain, flipped = predictions
    assert torch.equal(plain["ctr"], flipped["ctr"])
    assert not torch.equal(plain["cvr"], flipped["cvr"])


def test_logged_losses_are_the_weighted_objective_and_each_task(train_tiny):
    weights = "balance.weights={ctr: 2.0, ctcvr: 0.5}"
    run_dir, metrics = train_tiny(["model=esmm", weights, "trainer.epochs=1"])
    (row,) = history(run_dir)
    for split in ("train", "val"):
        assert row[f"{split}/loss"] == pytest.approx(
            2.0 * row[f"{split}/ctr_loss"] + 0.5 * row[f"{split}/ctcvr_loss"], rel=1e-6
        )
    assert metrics["metrics"]["test/loss"] == pytest.approx(
        2.0 * metrics["metrics"]["test/ctr_loss"] + 0.5 * metrics["metrics"]["test/ctcvr_loss"],
        rel=1e-6,
    )
    # the val task loss is the task's mean BCE: its logloss (probabilities clipped at 1e-7)
    assert row["val/ctr_loss"] == pytest.approx(row["val/ctr_logloss"], rel=1e-4)


def test_warns_when_the_best_epoch_is_the_last(train_tiny, caplog):
    with caplog.at_level(logging.WARNING, logger="mtlrec"):
        run_dir, metrics = train_tiny(["trainer.epochs=1"], name="short")
    assert metrics["best_epoch"] == 1
    assert (
        "val/mean_auc was still improving at the last epoch (1); try trainer.epochs=6"
        in caplog.text
    )
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="mtlrec"):
        # patience 1 over 6 epochs on the tiny data stops early: no hint then
        run_dir, metrics = train_tiny(
            ["trainer.epochs=6", "trainer.patience=1", "trainer.lr=0.05"], name="stopped"
        )
    assert metrics["stopped_early"] and metrics["best_epoch"] < metrics["epochs_run"]
    assert "still improving" not in caplog.text
    # The same run asked for exactly the epochs it ran: patience runs out AT the last epoch,
    # which is reaching the end, not stopping early.
    last = metrics["epochs_run"]
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="mtlrec"):
        _, reached = train_tiny(
            [f"trainer.epochs={last}", "trainer.patience=1", "trainer.lr=0.05"], name="reached"
        )
    assert reached["epochs_run"] == last and reached["best_epoch"] == metrics["best_epoch"]
    assert reached["stopped_early"] is False
    assert "early stopping" not in caplog.text


def test_evaluator_needs_no_optimizer_and_equals_the_trainers_evaluation():
    from mtlrec.data.loader import SplitTensors
    from mtlrec.training.evaluator import Evaluator

    spec, trainer = _toy_trainer("mmoe", TrainerConfig(eval_batch_size=100))
    b = _batch(spec, 250, seed=3)
    split = SplitTensors(b.sparse, b.dense, b.labels)
    evaluator = Evaluator(
        trainer.model, spec, trainer.loss_tasks, trainer.targets, torch.device("cpu"), 100
    )
    assert not hasattr(evaluator, "optimizer") and not hasattr(evaluator, "balancer")
    alone, via_trainer = evaluator.evaluate(split, "val"), trainer.evaluate(split, "val")
    assert alone == via_trainer
    assert {"val/ctr_auc", "val/cvr_auc", "val/mean_auc", "val/loss", "val/ctr_loss"} <= set(alone)
    predictions, _ = evaluator.predict(split)
    assert (
        predictions["ctr"].shape == (250,)
        and ((predictions["ctr"] > 0) & (predictions["ctr"] < 1)).all()
    )


def test_val_and_test_evaluation_draw_a_rows_bar_that_ends_at_the_split_size():
    """Evaluation of a big split takes seconds: the training Progress shows its rows, reaches the
    split's size and is removed; the metrics are those of an evaluation without a bar."""
    import io

    from rich.console import Console
    from rich.progress import Progress

    from mtlrec.data.loader import SplitTensors

    class Recording(Progress):
        def __init__(self):
            super().__init__(console=Console(file=io.StringIO(), force_terminal=True))
            self.calls = []

        def add_task(self, description, **kw):
            self.calls.append(("add", description, kw["total"]))
            return super().add_task(description, **kw)

        def update(self, task_id, **kw):
            self.calls.append(("update", kw.get("completed")))
            super().update(task_id, **kw)

        def remove_task(self, task_id):
            self.calls.append(("remove",))
            super().remove_task(task_id)

    spec, trainer = _toy_trainer("mmoe", TrainerConfig(eval_batch_size=100))
    b = _batch(spec, 250, seed=3)
    split = SplitTensors(b.sparse, b.dense, b.labels)
    rows = []
    plain = trainer.evaluator.evaluate(split, "val", on_rows=lambda d, t: rows.append((d, t)))
    assert rows == [(100, 250), (200, 250), (250, 250)]
    progress = Recording()
    with progress:
        shown = trainer.evaluate(split, "val", progress)
    assert shown == plain
    assert progress.calls[0] == ("add", "val", 250)
    assert progress.calls[-2:] == [("update", 250), ("remove",)]
    assert progress.tasks == []  # nothing left on the screen


@pytest.mark.parametrize(
    "tail, sizes", [("merge", [4, 4, 4, 5]), ("drop", [4, 4, 4, 4]), ("keep", [4, 4, 4, 4, 1])]
)
def test_a_streamed_epoch_merges_or_drops_its_tail_like_in_memory(tail, sizes):
    from mtlrec.training.batches import merge_tail

    rows = torch.arange(17)
    stream = (
        Batch(rows[i : i + 4, None], rows[i : i + 4, None].float(), rows[i : i + 4, None].float())
        for i in range(0, 17, 4)
    )
    plan = EpochPlan(17, 4, tail)
    out = list(merge_tail(stream, plan))
    assert [len(b.sparse) for b in out] == sizes and len(out) == plan.steps
    assert torch.cat([b.sparse[:, 0] for b in out]).tolist() == list(range(sum(sizes)))
