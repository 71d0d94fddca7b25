"""The movielens source on small generated files in the exact MovieLens 100K layout."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from helpers.datagen import prepare
from mtlrec.data.sources.movielens import GENRES, MovielensConfig, convert
from mtlrec.data.spec import DatasetSpec
from mtlrec.errors import MtlrecError


def write_ml100k(d, n_ratings=600, n_users=20, n_items=40, seed=0):
    rng = np.random.default_rng(seed)
    d.mkdir(parents=True, exist_ok=True)
    with open(d / "u.user", "w", encoding="latin-1") as f:
        for u in range(1, n_users + 1):
            f.write(
                f"{u}|{rng.integers(18, 70)}|{'MF'[u % 2]}|{['writer', 'student', 'other'][u % 3]}|{rng.integers(10000, 99999)}\n"
            )
    with open(d / "u.item", "w", encoding="latin-1") as f:
        for i in range(1, n_items + 1):
            flags = (rng.random(len(GENRES)) < 0.15).astype(int)
            f.write(f"{i}|Movie {i} (1995)|01-Jan-1995||http://x/{i}|{'|'.join(map(str, flags))}\n")
    ts = 880000000 + rng.integers(0, 5000, size=n_ratings)
    ts[1] = ts[0]  # two ratings of one user at the same second
    users = rng.integers(1, n_users + 1, size=n_ratings)
    users[1] = users[0]
    items = rng.integers(1, n_items + 1, size=n_ratings)
    ratings = rng.integers(1, 6, size=n_ratings)
    with open(d / "u.data", "w") as f:
        for u, i, r, t in zip(users, items, ratings, ts, strict=True):
            f.write(f"{u}\t{i}\t{r}\t{t}\n")
    return pd.DataFrame({"user_id": users, "item_id": items, "rating": ratings, "ts": ts})


def test_history_holds_only_earlier_ratings_and_genres_are_the_flags(tmp_path):
    raw = write_ml100k(tmp_path / "raw")
    out = tmp_path / "conv.parquet"
    counts = convert(tmp_path / "raw", MovielensConfig(history_len=5), out)
    assert counts == {"ratings": 600, "users": 20, "items": 40}
    conv = pq.read_table(out).to_pandas()
    for k in range(0, 600, 7):
        u, t = raw.user_id[k], raw.ts[k]
        earlier = raw[(raw.user_id == u) & (raw.ts < t)].sort_values(
            ["ts", "item_id"], kind="stable"
        )
        want = [str(i) for i in earlier.item_id][-5:]
        assert list(conv.history[k]) == want, k
    assert list(conv.history[0]) == list(conv.history[1])  # same second: neither sees the other
    lines = (tmp_path / "raw" / "u.item").read_text(encoding="latin-1").splitlines()
    flags = [line.split("|")[5:] for line in lines]
    item = int(raw.item_id[3])
    want = [g for g, f in zip(GENRES, flags[item - 1], strict=True) if f == "1"]
    assert list(conv.genres[3]) == want
    assert conv.like.tolist() == [int(r >= 4) for r in raw.rating]
    assert conv.user_id.tolist() == raw.user_id.tolist() and conv.ts.tolist() == raw.ts.tolist()


def test_movielens_prepares_with_a_time_split_and_both_tasks(tmp_path):
    raw = write_ml100k(tmp_path / "raw")
    result = prepare(
        [
            f"data_dir={tmp_path}",
            "dataset=movielens",
            f"dataset.raw_dir={tmp_path / 'raw'}",
            "dataset.history_len=8",
        ]
    )
    spec = DatasetSpec.load(result.path)
    assert [(t.name, t.type) for t in spec.tasks] == [("rating", "regression"), ("like", "binary")]
    hist = spec.feature("history")
    assert (hist.kind, hist.max_len, hist.shares_vocab_with, hist.pool, hist.target) == (
        "sequence", 8, "item_id", "target_attention", "item_id",
    )  # fmt: skip
    assert spec.feature("genres").kind == "bag" and spec.feature("genres").max_len == len(GENRES)
    assert sum(result.summary[s].rows for s in ("train", "val", "test")) == 600
    assert spec.info["split"]["by"] == "column" and spec.info["split"]["column"] == "ts"
    # split by time: every train rating is older than every test rating
    cut0, cut1 = spec.info["split"]["cuts"]
    assert result.summary["train"].rows == int((raw.ts < cut0).sum())
    assert result.summary["test"].rows == int((raw.ts >= cut1).sum())
    assert result.summary["train"].rows == pytest.approx(480, abs=10)
    assert not (result.path / "_converted").exists()
    test = pq.read_table(result.path / "test.parquet", columns=["history"]).column(0).to_pylist()
    assert max(len(h) for h in test) <= 8


def test_a_malformed_ratings_line_is_one_line(tmp_path):
    write_ml100k(tmp_path / "raw", n_ratings=20)
    with open(tmp_path / "raw" / "u.data", "a") as f:
        f.write("3\t7\tfive\t880000000\n")
    with pytest.raises(MtlrecError) as e:
        convert(tmp_path / "raw", MovielensConfig(), tmp_path / "c.parquet")
    assert str(e.value) == f"{tmp_path / 'raw' / 'u.data'}: line 21: rating 'five' is not a number"
