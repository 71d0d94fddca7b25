"""A small raw CSV with every new kind of column: a `|` bag, an `id:weight` bag, a history
sequence, a hashed field and a string label (shared by the tests of tests/data)."""

from __future__ import annotations

import numpy as np
import pandas as pd


def write_rich_csv(path, n=400, seed=0, start=0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    items = rng.integers(0, 30, size=n)
    genres = ["action", "drama", "comedy", "horror", "kids", "noir"]
    df = pd.DataFrame(
        {
            "user": [f"u{u}" for u in rng.integers(0, 50, size=n)],
            "item": [f"i{i}" for i in items],
            "genres": [
                "|".join(rng.choice(genres, size=rng.integers(0, 5), replace=False))
                for _ in range(n)
            ],
            "tags": [
                "|".join(
                    f"t{rng.integers(0, 20)}:{rng.integers(1, 9) / 4}"
                    for _ in range(rng.integers(1, 6))
                )
                for _ in range(n)
            ],
            "history": [
                "|".join(f"i{j}" for j in rng.integers(0, 40, size=rng.integers(0, 8)))
                for _ in range(n)
            ],
            "device": [f"d{d}" for d in rng.integers(0, 500, size=n)],
            "price": np.round(rng.exponential(20, size=n), 2),
            "income": np.where(rng.random(n) < 0.3, ">50K", "<=50K"),
            "rating": rng.integers(1, 6, size=n),
            "ts": np.arange(start, start + n),
        }
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(path, index=False)
    return df


def rich_config(tmp_path, files) -> dict:
    return {
        "name": "rich",
        "preparer": "csv",
        "path": str(tmp_path / "prepared"),
        "raw_dir": str(tmp_path),
        "files": files,
        "sparse": ["user", "item", "device"],
        "dense": [{"glob": "pri*"}],
        "bags": {
            "genres": {"max_len": 3},
            "tags": {"weighted": True, "max_len": 4},
        },
        "sequences": {
            "history": {
                "max_len": 5,
                "shares_vocab_with": "item",
                "pooling": "target_attention",
                "target": "item",
            }
        },
        "hash_buckets": {"device": 64},
        "feature_groups": {"user_side": ["user", "history"]},
        "targets": {
            "rich": {"label": "income", "positive": ">50K", "negative": "<=50K"},
            "rating": {"label": "rating", "type": "regression"},
        },
    }
