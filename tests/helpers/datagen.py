"""Generated raw files, dataset configs and helpers shared by the tests in tests/data/.

(No conftest.py here: tests elsewhere import the root one as `conftest`.)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[2]
# CI has the shared data next to the clone; tests that need it skip cleanly when it is absent.
SHARED_DATA = (REPO / ".." / "shared" / "data").resolve()


def make_events(n: int, seed: int = 0) -> pd.DataFrame:
    """A small click -> buy log: 3 sparse, 2 dense (with gaps), a time column, 2 labels."""
    rng = np.random.default_rng(seed)
    user = rng.zipf(1.6, size=n) % 40
    item = rng.integers(0, 15, size=n)
    city = np.array(["paris", "rome", "oslo", ""])[rng.integers(0, 4, size=n)]
    price = np.round(np.exp(rng.normal(2.0, 1.0, size=n)), 3).astype(object)
    price[rng.random(n) < 0.1] = ""  # missing values -> the fill value
    age = rng.integers(18, 80, size=n)
    logit = -1.0 + 0.03 * (age - 40) + 0.5 * (item % 3 == 0)
    click = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)
    buy = click * (rng.random(n) < 0.4).astype(int)
    return pd.DataFrame(
        {
            "ts": rng.permutation(n) + 1000,
            "user": [f"u{u}" for u in user],
            "item": item,
            "city": city,
            "price": price,
            "age": age,
            "click": click,
            "buy": buy,
        }
    )


def byo_config(raw_dir: Path, out: Path, **overrides) -> dict:
    """A resolved `preparer: csv` dataset config like the README's example."""
    cfg = {
        "name": "events",
        "preparer": "csv",
        "path": str(out),
        "tasks": None,
        "raw_dir": str(raw_dir),
        "files": {"train": "train.csv", "val": "val.csv", "test": "test.csv"},
        "sparse": ["user", "item", "city"],
        "dense": ["price", "age"],
        "dense_transform": "standardize",
        "dense_transforms": {"price": "log1p_standardize"},
        "dense_fill": 0.0,
        "min_count": 2,
        "targets": {
            "ctr": {"label": "click", "type": "binary"},
            "cvr": {"label": "buy", "type": "binary", "where": "click"},
        },
        "funnel": {"click": "click", "conversion": "buy"},
        "split": {"by": "files"},
    }
    cfg.update(overrides)
    return cfg


def write_events(tmp_path: Path) -> tuple[Path, pd.DataFrame]:
    """Raw dir with train/val/test CSVs (600/200/200 rows) and all.csv (the 1000 rows)."""
    raw = tmp_path / "raw"
    raw.mkdir()
    df = make_events(1000)
    df.to_csv(raw / "all.csv", index=False)
    df.iloc[:600].to_csv(raw / "train.csv", index=False)
    df.iloc[600:800].to_csv(raw / "val.csv", index=False)
    df.iloc[800:].to_csv(raw / "test.csv", index=False)
    return raw, df


def prepare(overrides: list[str], overwrite: bool = False):
    """`mtlrec prepare` in-process: compose conf/prepare.yaml with the overrides, then prepare."""
    from mtlrec.data.prepare import compose_prepare
    from mtlrec.data.sources import prepare_dataset

    cfg = compose_prepare(overrides)
    return prepare_dataset(cfg["dataset"], overwrite=overwrite)


def train(run_dir: Path, overrides: list[str]) -> dict:
    """`mtlrec train` in-process (composed config, real Trainer); returns metrics.json."""
    import json

    from hydra import compose, initialize_config_module

    from mtlrec.experiment import run

    base = ["device=cpu", "trainer.num_threads=1", "trainer.progress=false"]
    with initialize_config_module(config_module="mtlrec.conf", version_base="1.3"):
        cfg = compose(config_name="train", overrides=[*base, *overrides])
    run(cfg, run_dir)
    return json.loads((run_dir / "metrics.json").read_text())
