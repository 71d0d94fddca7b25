"""A binary and a regression task (like MovieLens' like + rating), with a test split where the
binary task has one class, through the real `mtlrec train` and `mtlrec compare`:

- trainer.monitor=auto selects on a metric every task enters (val/loss), says so in one log line;
- the one-class AUC is null, warned once naming split, task and count, recorded in metrics.json
  (`undefined_metrics`) and shown by compare as `undefined`, not blank.
"""

from __future__ import annotations

import csv
import json

import pytest

from helpers.cli import mtlrec
from helpers.multidata import rich_config, write_rich_csv
from mtlrec.data.sources import prepare_dataset

SPLITS = ("train", "val", "test")
TEST_ROWS = 300


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mixed")
    for i, split in enumerate(SPLITS):
        n = TEST_ROWS if split == "test" else 600
        df = write_rich_csv(tmp / f"{split}.csv", n=n, seed=40 + i, start=1000 * i)
        if split == "test":  # nobody in the test split earns >50K: one class
            df["income"] = "<=50K"
            df.to_csv(tmp / f"{split}.csv", index=False)
    cfg = rich_config(tmp, {s: f"{s}.csv" for s in SPLITS})
    prepare_dataset(cfg)
    run_dir = tmp / "run"
    out = mtlrec(
        "train",
        "dataset=prepared",
        f"dataset.path={tmp / 'prepared'}",
        "model=mmoe",
        "trainer.epochs=3",
        "trainer.patience=null",
        "trainer.batch_size=128",
        "trainer.num_threads=1",
        "device=cpu",
        f"hydra.run.dir={run_dir}",
        cwd=tmp,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return run_dir, out


def test_auto_monitor_accounts_for_the_regression_task_and_says_so(trained):
    run_dir, _ = trained
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert (metrics["monitor"], metrics["monitor_mode"]) == ("val/loss", "min")
    with open(run_dir / "history.csv") as f:
        losses = [float(row["val/loss"]) for row in csv.DictReader(f)]
    assert metrics["best_epoch"] == 1 + losses.index(min(losses))
    log = (run_dir / "train.log").read_text()
    line = (
        "trainer.monitor=auto: val/loss, the weighted validation loss of every trained task: "
        "rich (binary), rating (regression)"
    )
    assert log.count(line) == 1


def test_a_one_class_split_is_warned_once_recorded_and_compared_as_undefined(trained):
    run_dir, out = trained
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "completed"
    assert metrics["metrics"]["test/rich_auc"] is None
    assert metrics["metrics"]["val/rich_auc"] is not None  # val has both classes
    why = f"all {TEST_ROWS} rows have label income=0 (AUC needs both classes)"
    assert metrics["undefined_metrics"] == {"test/rich_auc": why}
    warning = f"test/rich_auc is null: {why}"
    assert (run_dir / "train.log").read_text().count(warning) == 1
    args = ("compare", str(run_dir), "--metric", "test/rich_auc", "--metric", "test/rating_mse")
    table = mtlrec(*args, "--format", "markdown", cwd=run_dir.parent)
    assert table.returncode == 0, table.stderr
    header, _, row = table.stdout.splitlines()[:3]
    cells = dict(zip(header.split(" | "), row.split(" | "), strict=True))
    assert cells["test/rich_auc"] == "undefined"  # recorded as null: not a blank cell
    assert float(cells["test/rating_mse"]) > 0
    as_json = json.loads(mtlrec(*args, "--format", "json", cwd=run_dir.parent).stdout)
    assert as_json[0]["test/rich_auc"] is None
