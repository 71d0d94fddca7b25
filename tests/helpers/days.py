"""Generated daily logs for the next-day training tests: every day has the users and items of the
days before and new ones, drawn from one fixed world (each user's and item's effect on the
click is the same every day), so a model trained on day 1 knows most of day 2."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

SPLITS = {"train": 0.7, "val": 0.15, "test": 0.15}
# The dataset config of the days (preparer csv on parquet files), as a user writes it.
DAYS_YAML = """\
name: days
preparer: csv
path: ${data_dir}/days
raw_dir: raw
vocab_from: null
files: {train: train.parquet, val: val.parquet, test: test.parquet}
sparse: [user, item, category]
dense: [price]
hash_buckets: {category: 16}
targets:
  click: {label: click, type: binary}
  like: {label: like, type: binary}
split: {by: files}
"""


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-x))


def make_day(day: int, rows: int = 3000, seed: int = 0) -> pd.DataFrame:
    world = np.random.default_rng(seed)  # the same effects every day
    user_effect, item_effect = world.normal(0, 1.3, 500), world.normal(0, 1.3, 500)
    category_effect = np.array([-1.6, -0.8, 0.0, 0.5, 1.0, 1.6])
    rng = np.random.default_rng(seed + 1000 * day)
    users, items = 60 + 25 * (day - 1), 40 + 15 * (day - 1)  # later days: new users and items
    u, i = rng.integers(0, users, rows), rng.integers(0, items, rows)
    c = rng.integers(0, len(category_effect), rows)
    click = rng.random(rows) < _sigmoid(user_effect[u] + item_effect[i] + category_effect[c] - 0.3)
    like = rng.random(rows) < _sigmoid(1.5 * item_effect[i] - 0.7 * user_effect[u])
    return pd.DataFrame(
        {
            "user": [f"u{x}" for x in u],
            "item": [f"i{x}" for x in i],
            "category": [f"c{x}" for x in c],
            "price": np.round(rng.lognormal(2.0, 0.5, rows), 2),
            "click": click.astype(np.int64),
            "like": like.astype(np.int64),
        }
    )


def write_day(raw_dir: Path, day: int, rows: int = 3000) -> pd.DataFrame:
    """raw_dir/{train,val,test}.parquet of one day (70/15/15 of its rows)."""
    raw_dir.mkdir(parents=True, exist_ok=True)
    df = make_day(day, rows)
    start = 0
    for split, share in SPLITS.items():
        end = start + int(round(share * rows))
        df.iloc[start:end].to_parquet(raw_dir / f"{split}.parquet", index=False)
        start = end
    return df


def write_config(conf_dir: Path) -> Path:
    (conf_dir / "dataset").mkdir(parents=True, exist_ok=True)
    path = conf_dir / "dataset" / "days.yaml"
    path.write_text(DAYS_YAML)
    return path
