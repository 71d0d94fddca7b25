"""Bring-your-own CSV end to end through the real `mtlrec` command: the README's example config
(extracted from README.md) on a generated CSV, `prepare` then `train`, plus the one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from helpers.datagen import REPO
from mtlrec.data.prepare import compose_prepare
from mtlrec.data.sources import resolve_dataset_dir
from mtlrec.errors import MtlrecError

MARKER = "<!-- byo-example: tests/data/test_byo_csv.py runs exactly this file -->"


def readme_example() -> str:
    text = (REPO / "README.md").read_text()
    after = text.split(MARKER, 1)[1]
    block = after.split("```yaml\n", 1)[1].split("```", 1)[0]
    return block


def write_events_csv(path, n=3000, seed=0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    item = rng.integers(0, 60, size=n)
    age = rng.integers(18, 80, size=n)
    price = np.round(np.exp(rng.normal(3, 1, size=n)), 2)
    logit = -1.5 + 0.8 * (item % 4 == 0) - 0.4 * np.log(price) + 0.02 * (age - 40) + 1.0
    click = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)
    df = pd.DataFrame(
        {
            "user_id": [f"u{u}" for u in rng.integers(0, 300, size=n)],
            "item_id": [f"i{i}" for i in item],
            "category": np.array(["shoes", "books", "toys"])[item % 3],
            "price": price,
            "age": age,
            "day": np.sort(rng.integers(1, 31, size=n)),
            "click": click,
            "purchase": click * (rng.random(n) < 0.3 + 0.3 * (item % 2)).astype(int),
        }
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(path, index=False)
    return df


def mtlrec(cwd, *args):
    env = {**os.environ, "MTLREC_DATA_DIR": str(cwd / "cache"), "HYDRA_FULL_ERROR": "0"}
    cmd = [sys.executable, "-m", "mtlrec", *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_readme_example_prepares_and_trains_through_the_cli(tmp_path):
    (tmp_path / "my_conf" / "dataset").mkdir(parents=True)
    (tmp_path / "my_conf" / "dataset" / "my_data.yaml").write_text(readme_example())
    df = write_events_csv(tmp_path / "data" / "events.csv")
    train_args = [
        "train", "--config-dir", "my_conf", "dataset=my_data", "model=esmm", "trainer.epochs=1",
        "trainer.num_threads=1", "trainer.progress=false", "device=cpu", "hydra.run.dir=run",
    ]  # fmt: skip

    # Not prepared yet: train stops with one line naming the command to run.
    cfg = compose_prepare(
        [f"data_dir={tmp_path / 'cache'}", "dataset=my_data"], str(tmp_path / "my_conf")
    )
    with pytest.raises(MtlrecError) as e:
        resolve_dataset_dir(cfg["dataset"])
    assert str(e.value) == (
        f"{tmp_path / 'cache' / 'my_data'}: data dir of dataset 'my_data' does not exist; "
        "run `mtlrec prepare dataset=my_data` or fix dataset.path"
    )

    done = mtlrec(tmp_path, "prepare", "--config-dir", "my_conf", "dataset=my_data")
    assert done.returncode == 0, done.stderr
    assert f"prepared my_data at {tmp_path / 'cache' / 'my_data'}\n" in done.stdout
    assert "train with: mtlrec train --config-dir my_conf dataset=my_data\n" in done.stdout
    assert "oov test" in done.stdout and "cvr (purchase | click=1)" in done.stdout
    spec = json.loads((tmp_path / "cache" / "my_data" / "spec.json").read_text())
    rows = spec["info"]["rows"]
    assert sum(rows.values()) == len(df)
    cut_train, cut_val = spec["info"]["split"]["cuts"]
    assert rows["train"] == int((df.day < cut_train).sum())  # the oldest days train
    assert [f["name"] for f in spec["features"]] == [
        "user_id",
        "item_id",
        "category",
        "price",
        "age",
    ]
    assert spec["info"]["dense"]["price"]["transform"] == "log1p_standardize"

    trained = mtlrec(tmp_path, *train_args)
    assert trained.returncode == 0, trained.stderr[-2000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["dataset"] == "my_data"
    assert 0.0 <= metrics["metrics"]["test/ctr_auc"] <= 1.0


def test_bad_input_is_one_line_through_the_cli(tmp_path):
    (tmp_path / "my_conf" / "dataset").mkdir(parents=True)
    (tmp_path / "my_conf" / "dataset" / "my_data.yaml").write_text(readme_example())
    write_events_csv(tmp_path / "data" / "events.csv", n=50)
    with open(tmp_path / "data" / "events.csv", "a") as f:
        f.write("u1,i1,shoes,2.0\n")  # line 52: 4 of 8 columns
    bad = mtlrec(tmp_path, "prepare", "--config-dir", "my_conf", "dataset=my_data")
    assert bad.returncode == 1 and bad.stdout == ""
    assert bad.stderr == (
        "mtlrec prepare: error: data/events.csv: line 52: malformed row, expected 8 columns, got 4: 'u1,i1,shoes,2.0'\n"
    )
    assert not (tmp_path / "cache" / "my_data").exists()
    missing = mtlrec(tmp_path, "prepare", "dataset=nope")
    # an unknown dataset is a usage error (exit 2), one line listing the known ones (docs/errors.md)
    assert missing.returncode == 2 and len(missing.stderr.strip().splitlines()) == 1
    assert "mtlrec prepare: error: unknown dataset 'nope'; known datasets: " in missing.stderr
