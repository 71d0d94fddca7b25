"""Sample weights (docs/training.md "Sample weights"): dataset.sample_weight and a target's own
sample_weight column through prepare, the loss (a weighted mean per batch), metrics.weighted,
streaming, exact resume, the one-line errors, and the corrupted-rows study through the CLI."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import log_loss, roc_auc_score

from conftest import compose_train, run_training
from helpers.datagen import REPO
from helpers.stops import stop_then_resume
from mtlrec.data.loader import load_split
from mtlrec.data.sources import prepare_dataset
from mtlrec.data.spec import DatasetSpec, FunnelSpec, TaskSpec
from mtlrec.errors import MtlrecError
from mtlrec.training.metrics import EvalTarget, split_metrics, weighted_auc
from mtlrec.training.objective import Objective

SPLITS = ("train", "val", "test")


def events(n: int, seed: int, corrupt: bool = False) -> pd.DataFrame:
    """Rows whose click follows sigmoid(logit) of the features, of weight in [0.5, 1.5]; `p_true`
    is the click probability (the best any model can do). With `corrupt`, every row also comes
    as a corrupted copy, its label flipped, of weight 0, the rows shuffled: unweighted, the
    copies cancel the signal exactly (for each x as many clicks as non-clicks)."""
    rng = np.random.default_rng(seed)
    x1, x2 = rng.normal(size=n), rng.normal(size=n)
    item = rng.integers(0, 20, size=n)
    effect = np.random.default_rng(99).normal(0, 1, size=20)  # the same items in every split
    p = 1 / (1 + np.exp(-(2.5 * x1 - 1.5 * x2 + effect[item])))
    click = (rng.random(n) < p).astype(int)
    purchase = click * (rng.random(n) < 0.4).astype(int)
    frame = pd.DataFrame(
        {
            "item": [f"i{i}" for i in item],
            "x1": x1,
            "x2": x2,
            "click": click,
            "purchase": purchase,
            "w": np.round(rng.uniform(0.5, 1.5, size=n), 3),
            "wc": np.round(rng.uniform(0, 3, size=n), 3),
            "p_true": p,
            "corrupt": 0,
        }  # fmt: skip
    )
    if not corrupt:
        return frame
    copies = frame.assign(click=1 - frame["click"], purchase=0, w=0.0, corrupt=1)
    both = pd.concat([frame, copies], ignore_index=True)
    return both.iloc[rng.permutation(len(both))].reset_index(drop=True)


def dataset_config(raw: Path, out: Path, **extra) -> dict:
    return {
        "name": "weighted", "preparer": "csv", "path": str(out), "raw_dir": str(raw),
        "files": {s: f"{s}.csv" for s in SPLITS}, "sparse": ["item"], "dense": ["x1", "x2"],
        "targets": {"ctr": {"label": "click"}}, "sample_weight": "w", **extra,
    }  # fmt: skip


def write_raw(raw: Path, sizes=(1200, 300, 300), corrupt: bool = False) -> dict[str, pd.DataFrame]:
    raw.mkdir(parents=True, exist_ok=True)
    frames = {}
    for k, (split, n) in enumerate(zip(SPLITS, sizes, strict=True)):
        frames[split] = events(n, seed=k, corrupt=corrupt)
        frames[split].to_csv(raw / f"{split}.csv", index=False)
    return frames


@pytest.fixture(scope="module")
def weighted_data(tmp_path_factory):
    """A prepared dataset with a dataset-wide weight `w` and cvr's own weight column `wc`."""
    tmp = tmp_path_factory.mktemp("weighted")
    frames = write_raw(tmp / "raw", sizes=(2800, 600, 600))
    targets = {"ctr": {"label": "click"}, "cvr": {"label": "purchase", "where": "click", "sample_weight": "wc"}}  # fmt: skip
    prepare_dataset(dataset_config(tmp / "raw", tmp / "data", targets=targets))
    return tmp / "data", frames


# -- the loss ---------------------------------------------------------------------------------


def test_weighted_loss_is_the_weighted_mean_per_task_by_hand():
    spec = DatasetSpec(
        "toy", (), ("click", "buy", "y", "w", "wb"),
        (TaskSpec("ctr", "click"), TaskSpec("cvr", "buy", where="click", sample_weight="wb"),
         TaskSpec("val", "y", type="regression")),
        sample_weight="w",
    )  # fmt: skip
    labels = torch.tensor(
        [
            [1, 1, 2.0, 0.5, 3.0],
            [0, 0, -1.0, 0.25, 1.0],
            [1, 0, 0.0, 0.0, 2.0],
            [0, 0, 1.0, 2.0, 9.0],
        ]
    )
    outputs = {"ctr": torch.tensor([0.3, -1.0, 2.0, 0.5]), "cvr": torch.tensor([1.0, 0.2, -0.7, 4.0]),
               "val": torch.tensor([1.5, 0.0, 3.0, 1.0])}  # fmt: skip
    means, _, sums, counts = Objective(spec.tasks, spec).losses(outputs, labels)

    def bce(z, y):
        return -(
            y * math.log(1 / (1 + math.exp(-z))) + (1 - y) * math.log(1 - 1 / (1 + math.exp(-z)))
        )

    w = [0.5, 0.25, 0.0, 2.0]
    ctr = (
        sum(wi * bce(z, y) for wi, z, y in zip(w, [0.3, -1.0, 2.0, 0.5], [1, 0, 1, 0], strict=True))
        / 2.75
    )
    cvr = (3.0 * bce(1.0, 1) + 2.0 * bce(-0.7, 0)) / 5.0  # its own weights, clicked rows only
    val = (0.5 * 0.25 + 0.25 * 1.0 + 0.0 * 9.0 + 2.0 * 0.0) / 2.75  # w * (pred - y)^2
    assert torch.allclose(means, torch.tensor([ctr, cvr, val]), rtol=1e-6)
    assert torch.allclose(counts, torch.tensor([2.75, 5.0, 2.75]))
    # trainer.sample_weights=false: plain means, counts are rows again
    plain, _, _, rows = Objective(spec.tasks, spec, sample_weights=False).losses(outputs, labels)
    assert rows.tolist() == [4.0, 2.0, 4.0]
    assert not torch.allclose(plain, means)
    # weights that sum below 1 are not clamped to 1 (a batch of two rows of weight 0.1)
    small = labels[:2].clone()
    small[:, 3] = 0.1
    m, *_ = Objective(spec.tasks, spec).losses({k: v[:2] for k, v in outputs.items()}, small)
    assert m[0].item() == pytest.approx((bce(0.3, 1) + bce(-1.0, 0)) / 2, rel=1e-6)
    # every weight 0: the task's loss is 0 (not NaN), like a batch without rows of its space
    zero = labels.clone()
    zero[:, 3] = 0.0
    assert Objective(spec.tasks, spec).losses(outputs, zero)[0][0].item() == 0.0


def test_a_models_own_task_takes_the_dataset_weight_and_a_copy_the_tasks_own():
    spec = DatasetSpec(
        "toy", (), ("click", "buy", "w", "wb"),
        (TaskSpec("ctr", "click"), TaskSpec("cvr", "buy", where="click", sample_weight="wb")),
        funnel=FunnelSpec("click", "buy"), sample_weight="w",
    )  # fmt: skip
    assert spec.weight_column(TaskSpec("ctcvr", "buy")) == "w"  # ESMM's ctcvr
    assert spec.weight_column(TaskSpec("cvr", "buy", where="click")) == "wb"  # the funnel's cvr
    assert spec.weight_columns == ("w", "wb")
    unweighted = DatasetSpec("toy", (), ("click",), (TaskSpec("ctr", "click"),))
    assert unweighted.weight_column(TaskSpec("ctr", "click")) is None
    assert "sample_weight" not in json.dumps(unweighted.to_dict())  # spec.json as before


# -- metrics ----------------------------------------------------------------------------------


def test_weighted_auc_and_logloss_equal_sklearn_with_sample_weight():
    rng = np.random.default_rng(3)
    y = (rng.random(500) < 0.3).astype(float)
    p = np.round(rng.uniform(0.01, 0.99, 500), 2)  # ties; away from the clipped ends
    w = rng.uniform(0, 2, 500) * (rng.random(500) < 0.8)  # some zeros
    assert weighted_auc(y, p, w) == pytest.approx(roc_auc_score(y, p, sample_weight=w), abs=1e-12)
    assert weighted_auc(y, p, np.ones(500)) == pytest.approx(roc_auc_score(y, p), abs=1e-12)
    assert math.isnan(weighted_auc(y, p, w * (1 - y)))  # no positive weight
    spec = DatasetSpec("toy", (), ("click", "w"), (TaskSpec("ctr", "click"),), sample_weight="w")
    labels = np.stack([y, w], axis=1).astype(np.float32)
    targets = [EvalTarget(spec.tasks[0], in_mean=True)]
    args = ("test", {"ctr": p}, labels, targets, spec, spec.tasks)
    on = split_metrics(*args, weighted=True)
    off = split_metrics(*args)
    w = labels[:, 1].astype(np.float64)  # the weights as loaded: float32
    assert on["test/ctr_auc"] == pytest.approx(roc_auc_score(y, p, sample_weight=w), abs=1e-9)
    assert on["test/ctr_logloss"] == pytest.approx(log_loss(y, p, sample_weight=w), rel=1e-9)
    assert on["test/ctr_pcoc"] == pytest.approx((w * p).sum() / (w * y).sum(), rel=1e-9)
    assert off["test/ctr_auc"] == pytest.approx(roc_auc_score(y, p), abs=1e-9)
    assert off["test/ctr_logloss"] == pytest.approx(log_loss(y, p), rel=1e-9)
    assert on["test/ctr_auc"] != off["test/ctr_auc"]


# -- prepare, loading, streaming --------------------------------------------------------------


def test_prepare_keeps_the_weights_and_loading_and_streaming_carry_them(weighted_data):
    from mtlrec.data.streaming import StreamingSplit

    data, frames = weighted_data
    spec = DatasetSpec.load(data)
    assert spec.labels == ("click", "purchase", "w", "wc")
    assert spec.sample_weight == "w" and spec.tasks[1].sample_weight == "wc"
    train = load_split(data / "train.parquet", spec, spec.tasks)
    got = train.labels[:, spec.label_index("w")].numpy()
    assert np.array_equal(got, frames["train"]["w"].to_numpy(np.float32))
    stream = StreamingSplit(data / "train.parquet", spec, spec.tasks, 1000, read_rows=500)
    streamed = torch.cat([b.labels for b in stream.batches(700, torch.Generator().manual_seed(0))])
    order = np.lexsort(streamed.numpy().T[::-1])
    assert np.array_equal(  # every row's weights, whatever the shuffled order
        streamed.numpy()[order], train.labels.numpy()[np.lexsort(train.labels.numpy().T[::-1])]
    )


def _doc_lines() -> str:
    return (REPO / "docs" / "errors.md").read_text()


@pytest.mark.parametrize(
    "bad, line",
    [
        ("-1", "{f}: line 5: sample weight column 'w' holds -1; sample weights must be finite numbers >= 0 (0 leaves a row out of the loss)"),
        ("", "{f}: line 5: sample weight column 'w' is empty; give every row a weight (0 leaves a row out of the loss)"),
        ("abc", "{f}: line 5: sample weight column 'w' holds 'abc', not a number"),
        ("nan", "{f}: line 5: sample weight column 'w' is empty; give every row a weight (0 leaves a row out of the loss)"),
        ("inf", "{f}: line 5: sample weight column 'w' holds inf; sample weights must be finite numbers >= 0 (0 leaves a row out of the loss)"),
        ("zeros", "dataset 'weighted': sample weight column 'w' is 0 on every train row, so nothing would train; give the rows that count a weight > 0"),
        ("missing", "{f}: column(s) ['w'] not found; the file has 8 columns: ['item', 'x1', 'x2', 'click', 'purchase', 'wc', 'p_true', 'corrupt']"),
    ],
)  # fmt: skip
def test_a_bad_weight_is_one_line_and_nothing_is_published(tmp_path, bad, line):
    frames = write_raw(tmp_path / "raw", sizes=(20, 10, 10))
    train = frames["train"].astype({"w": str})
    if bad == "zeros":
        train["w"] = "0"
    elif bad == "missing":
        train = train.drop(columns="w")
    else:
        train.loc[3, "w"] = bad
    train.to_csv(tmp_path / "raw" / "train.csv", index=False)
    with pytest.raises(MtlrecError) as e:
        prepare_dataset(dataset_config(tmp_path / "raw", tmp_path / "out"))
    assert str(e.value) == line.format(f=tmp_path / "raw" / "train.csv")
    assert not (tmp_path / "out").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw"]  # no staging dir left
    if bad in ("-1", "", "abc", "zeros"):  # docs/errors.md's rows (the others: the same words)
        documented = line.format(f="RAW/train.csv").replace("'weighted'", "'NAME'")
        assert f"{documented}`" in _doc_lines()


@pytest.mark.parametrize(
    "change, line",
    [
        ({"targets": {"ctr": {"label": "click", "weight": "w"}}}, "dataset.targets.ctr.weight='w': `weight` is the task's loss weight (a number); to weigh rows by a column use targets.ctr.sample_weight: w"),
        ({"sample_weight": "click"}, "dataset.sample_weight 'click' is also a label/where/funnel column; weigh rows by a column of their own"),
        ({"sample_weight": "x1"}, "dataset.sample_weight 'x1' is also a feature; weigh rows by a column of their own"),
        ({"preparer": "aliccp"}, "dataset.sample_weight='w': the 'aliccp' preparer does not keep a weight column; prepare files that hold one with preparer: csv (docs/datasets.md)"),
    ],
)  # fmt: skip
def test_a_weight_config_mistake_is_one_line(tmp_path, change, line):
    write_raw(tmp_path / "raw", sizes=(20, 10, 10))
    cfg = {**dataset_config(tmp_path / "raw", tmp_path / "out"), **change}
    if change.get("preparer") == "aliccp":
        cfg = {"name": "aliccp", "preparer": "aliccp", "path": str(tmp_path / "out"), "sample_weight": "w"}  # fmt: skip
    with pytest.raises(MtlrecError) as e:
        prepare_dataset(cfg)
    assert str(e.value) == line
    assert f"`{line}`" in _doc_lines()


def test_census_rows_are_weighted_by_their_instance_weight(tmp_path):
    from data.test_census import census_rows

    from helpers.datagen import prepare

    raw = tmp_path / "raw"
    raw.mkdir()
    lines, _ = census_rows(200, 3)
    (raw / "census-income.test").write_text("\n".join(lines) + "\n")
    base = [f"data_dir={tmp_path}", "dataset=census", f"dataset.raw_dir={raw}"]
    result = prepare([*base, "dataset.sample_weight=instance_weight"])
    spec = DatasetSpec.load(result.path)
    assert spec.sample_weight == "instance_weight"
    assert "instance_weight" not in [f.name for f in spec.features]  # never a feature
    kept = sum(
        load_split(result.path / f"{s}.parquet", spec).labels[:, -1].double().sum().item()
        for s in SPLITS
    )
    raw_total = sum(float(line.split(", ")[24]) for line in lines)
    assert kept == pytest.approx(raw_total, rel=1e-6)  # every row's weight, in some split
    with pytest.raises(MtlrecError) as e:
        prepare([*base, "dataset.sample_weight=age", "dataset.path=" + str(tmp_path / "g")])
    assert str(e.value) == (
        "dataset.sample_weight='age': census rows can be weighted by 'instance_weight' only "
        "(the survey's population weight)"
    )


def test_a_training_run_naming_another_weight_column_is_refused(weighted_data):
    data, _ = weighted_data
    with pytest.raises(MtlrecError) as e:
        DatasetSpec.load(data, sample_weight="wc")
    assert str(e.value) == (
        f"dataset.sample_weight='wc': dataset 'weighted' ({data}) was prepared with sample_weight "
        "'w'; set dataset.sample_weight=w or prepare it again (overwrite=true)"
    )
    assert DatasetSpec.load(data, sample_weight="w").sample_weight == "w"


# -- exact resume with weights ------------------------------------------------------------------


def test_a_weighted_run_resumes_mid_epoch_exactly(tmp_path, weighted_data, monkeypatch):
    from mtlrec.experiment import run

    from .test_resume import BATCH, assert_same_run

    data, _ = weighted_data
    base = ["dataset=prepared", f"dataset.path={data}", "model=mmoe", "metrics.weighted=true",
            "trainer.epochs=2", "trainer.batch_size=256", "trainer.num_threads=1", "device=cpu",
            *BATCH]  # fmt: skip
    ref_dir, ref = run_training(tmp_path, base, name="straight")
    assert ref["status"] == "completed" and 0.6 < ref["metrics"]["test/ctr_auc"] < 1.0
    run_dir = tmp_path / "run"
    resumed = compose_train([*base, f"resume={run_dir}"])
    # 2800 rows / 32: poll 87 + 1 + 30 is mid-epoch 2
    stop = stop_then_resume(monkeypatch, run, compose_train(base), resumed, run_dir, 87 + 1 + 30)
    assert "after epoch 2 step 30/87" in str(stop)
    assert_same_run(run_dir, ref_dir)


# -- the study: corrupted rows of weight 0, through the real CLI --------------------------------


def mtlrec(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "MTLREC_DATA_DIR": str(cwd / "cache"), "HYDRA_FULL_ERROR": "0"}
    cmd = [sys.executable, "-m", "mtlrec", *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


CORRUPT_YAML = """\
name: corrupt
preparer: csv
path: ${data_dir}/corrupt
raw_dir: raw
files: {train: train.csv, val: val.csv, test: test.csv}
sparse: [item]
dense: [x1, x2]
targets: {ctr: {label: click}}
sample_weight: w
"""


def test_corrupted_rows_of_weight_zero_train_to_the_clean_auc_and_without_weights_to_chance(
    tmp_path,
):
    """Every row of every split also comes as a corrupted copy, its label flipped, of weight 0.
    `mtlrec prepare` + `mtlrec train` with the weights: the model learns the clean rows, and its
    test AUC (metrics.weighted: over the clean rows) reaches that of the true click probability.
    With trainer.sample_weights=false the copies cancel the signal exactly (as many clicks as
    non-clicks for every x): the model learns nothing, its test log loss stays at a coin's
    (ln 2 = 0.693; AUC is no measure of that: the order left in near-constant predictions can
    point either way, 0.48 to 0.91 over four data seeds)."""
    frames = write_raw(tmp_path / "raw", sizes=(2000, 500, 500), corrupt=True)
    (tmp_path / "conf" / "dataset").mkdir(parents=True)
    (tmp_path / "conf" / "dataset" / "corrupt.yaml").write_text(CORRUPT_YAML)
    done = mtlrec(tmp_path, "prepare", "--config-dir", "conf", "dataset=corrupt")
    assert done.returncode == 0, done.stderr
    test = frames["test"][frames["test"]["corrupt"] == 0]
    oracle = roc_auc_score(test["click"], test["p_true"], sample_weight=test["w"])
    oracle_logloss = log_loss(test["click"], test["p_true"], sample_weight=test["w"])
    assert oracle > 0.88
    settings = ["model=shared_bottom", "metrics.weighted=true", "trainer.epochs=3",
                "trainer.lr=0.01", "trainer.batch_size=256", "trainer.num_threads=1"]  # fmt: skip
    train = ["train", "--config-dir", "conf", "dataset=corrupt", *settings,
             "trainer.progress=false", "device=cpu", "hydra.run.dir=weighted"]  # fmt: skip
    done = mtlrec(tmp_path, *train)
    assert done.returncode == 0, done.stderr
    weighted = json.loads((tmp_path / "weighted" / "metrics.json").read_text())["metrics"]
    assert weighted["test/ctr_auc"] > oracle - 0.03, (weighted, oracle)
    assert weighted["test/ctr_logloss"] < oracle_logloss + 0.05, (weighted, oracle_logloss)
    data = ["dataset=prepared", f"dataset.path={tmp_path / 'cache' / 'corrupt'}"]
    _, unweighted = run_training(tmp_path, [*data, *settings, "trainer.sample_weights=false"])
    assert unweighted["metrics"]["test/ctr_logloss"] > 0.68, unweighted["metrics"]
    print(  # the figures of docs/training.md (pytest -s)
        f"true p: auc {oracle:.4f} logloss {oracle_logloss:.4f}; "
        + "; ".join(
            f"{name}: auc {m['test/ctr_auc']:.4f} logloss {m['test/ctr_logloss']:.4f}"
            for name, m in (("weighted", weighted), ("unweighted", unweighted["metrics"]))
        )
    )
