"""Helpers of tests/ranking/: a prepared two-task dataset whose best fusion is known by construction, and a run trained on it.

click depends on field `a` only and conversion on field `b` only (independent labels), so a
calibrated model's expected utility of a row is w_click * p_click + w_conversion * p_conversion:
the sum fusion with weights in that ratio ranks best.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from helpers.cli import env


def write_two_task_csvs(raw: Path, n: int = 6000, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 20, size=n)
    b = rng.integers(0, 20, size=n)
    click = rng.random(n) < 0.05 + 0.6 * a / 19
    conversion = rng.random(n) < 0.02 + 0.4 * b / 19
    df = pd.DataFrame(
        {
            "user": [f"u{u}" for u in rng.integers(0, 60, size=n)],
            "a": [f"a{x}" for x in a],
            "b": [f"b{x}" for x in b],
            "click": click.astype(int),
            "conversion": conversion.astype(int),
        }
    )
    raw.mkdir(parents=True)
    cut = [int(n * 0.6), int(n * 0.8)]
    df.iloc[: cut[0]].to_csv(raw / "train.csv", index=False)
    df.iloc[cut[0] : cut[1]].to_csv(raw / "val.csv", index=False)
    df.iloc[cut[1] :].to_csv(raw / "test.csv", index=False)


DATASET_YAML = """\
name: two_tasks
preparer: csv
path: {out}
raw_dir: {raw}
files: {{train: train.csv, val: val.csv, test: test.csv}}
sparse: [user, a, b]
dense: []
targets:
  ctr: {{label: click, type: binary}}
  conv: {{label: conversion, type: binary}}
split: {{by: files}}
"""


def cli(*args: str, cwd: Path, timeout: int = 240) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mtlrec", *args],
        cwd=cwd,
        env=env(MTLREC_DATA_DIR=str(cwd / "cache")),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def prepare_and_train(root: Path) -> Path:
    """A shared-bottom run (3 epochs, 3,600 training rows) on the two-task data; its run dir."""
    write_two_task_csvs(root / "raw")
    (root / "conf" / "dataset").mkdir(parents=True)
    (root / "conf" / "dataset" / "two_tasks.yaml").write_text(
        DATASET_YAML.format(out=root / "data", raw=root / "raw")
    )
    done = cli("prepare", "--config-dir", "conf", "dataset=two_tasks", cwd=root)
    assert done.returncode == 0, done.stderr
    done = cli(
        "train", "dataset=prepared", f"dataset.path={root / 'data'}", "model=shared_bottom",
        "trainer.epochs=3", "trainer.lr=0.01", "trainer.batch_size=256", "trainer.num_threads=1",
        "trainer.progress=false", "device=cpu", "hydra.run.dir=run", cwd=root,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return root / "run"
