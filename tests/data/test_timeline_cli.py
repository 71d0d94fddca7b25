"""Logs in time order through the real `mtlrec` command: docs/training.md's example config
(extracted from the doc) on a generated log, `prepare` (per-user time split, history built from
the log), `train` with target attention over the built history, and `predict` on the raw log,
whose scores for the test rows equal predict's on the prepared test rows (and differ when the
raw input lacks the earlier events)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from helpers.cli import env, mtlrec
from helpers.datagen import REPO

MARKER = "<!-- timeline-example: tests/data/test_timeline_cli.py prepares and trains exactly this file -->"


def doc_example() -> str:
    text = (REPO / "docs" / "training.md").read_text()
    return text.split(MARKER, 1)[1].split("```yaml\n", 1)[1].split("```", 1)[0]


def make_log(users: int = 150, per_user: int = 20, movies: int = 30, seed: int = 0) -> pd.DataFrame:
    """Each user returns to a few favourite movies; a click is likely on a movie the user has
    seen before (in the history), unlikely otherwise. Times are unique (rows in no time order)."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(users):
        favourites = rng.choice(movies, 4, replace=False)
        seen: set[int] = set()
        for _ in range(per_user):
            m = int(rng.choice(favourites) if rng.random() < 0.6 else rng.integers(movies))
            click = int(rng.random() < (0.8 if m in seen else 0.1))
            rows.append((f"u{u}", f"m{m}", click))
            seen.add(m)
    df = pd.DataFrame(rows, columns=["user_id", "movie_id", "click"])
    # Times increase within a user; the file is shuffled.
    df["ts"] = df.groupby("user_id").cumcount() * 1000 + rng.permutation(len(df)) % 1000
    return df.sample(frac=1.0, random_state=seed).reset_index(drop=True)


def test_user_time_split_and_built_history_prepare_train_and_predict(tmp_path):
    (tmp_path / "my_conf" / "dataset").mkdir(parents=True)
    (tmp_path / "my_conf" / "dataset" / "my_log.yaml").write_text(doc_example())
    (tmp_path / "data").mkdir()
    df = make_log()
    df.to_csv(tmp_path / "data" / "log.csv", index=False)
    run_env = env(MTLREC_DATA_DIR=str(tmp_path / "cache"))
    conf = ["--config-dir", "my_conf", "dataset=my_log"]

    done = mtlrec("prepare", *conf, cwd=tmp_path, env=run_env)
    assert done.returncode == 0, done.stderr
    data = tmp_path / "cache" / "my_log"
    spec = json.loads((data / "spec.json").read_text())
    assert spec["info"]["split"] | {"seed": 0} == {
        "by": "user_time", "seed": 0, "user": "user_id", "time": "ts", "test": 1, "val": 1,
        "users": 150, "users_all_train": 0,
    }  # fmt: skip
    assert spec["info"]["rows"] == {"train": 150 * 18, "val": 150, "test": 150}
    history = next(f for f in spec["features"] if f["name"] == "history")
    assert (history["pooling"], history["target"], history["shares_vocab_with"]) == (
        "target_attention",
        "movie_id",
        "movie_id",
    )
    test = pq.read_table(data / "test.parquet").to_pandas()
    assert test.history.map(len).tolist() == [19] * 150  # its user's 19 earlier events

    train = [
        "train", *conf, "model=mmoe", "trainer.epochs=1", "trainer.lr=0.03", "trainer.batch_size=256", "trainer.num_threads=1",
        "trainer.progress=false", "device=cpu", "hydra.run.dir=run",
    ]  # fmt: skip
    trained = mtlrec(*train, cwd=tmp_path, env=run_env)
    assert trained.returncode == 0, trained.stderr[-2000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["status"] == "completed" and 0 <= metrics["metrics"]["test/ctr_auc"] <= 1

    raw = mtlrec(
        "predict", "run", "--input", "data/log.csv", "--output", "raw.parquet",
        "--id-columns", "user_id", "ts", cwd=tmp_path, env=run_env,
    )  # fmt: skip
    assert raw.returncode == 0, raw.stderr
    prepared = mtlrec(
        "predict", "run", "--input", str(data / "test.parquet"), "--output", "prep.parquet",
        cwd=tmp_path, env=run_env,
    )  # fmt: skip
    assert prepared.returncode == 0, prepared.stderr
    scores = pq.read_table(tmp_path / "raw.parquet").to_pandas()
    assert len(scores) == len(df)
    # The test rows: each user's last event, in the log file's order (as prepare wrote them).
    last = df.ts == df.groupby("user_id").ts.transform("max")
    want = scores[last.to_numpy()].ctr.to_numpy()
    got = pq.read_table(tmp_path / "prep.parquet").to_pandas().ctr.to_numpy()
    np.testing.assert_allclose(want, got, rtol=0, atol=1e-6)

    # The test rows alone hold no earlier events: empty histories, other scores (the model's
    # attention over the history moves them).
    df[last.to_numpy()].to_csv(tmp_path / "data" / "alone.csv", index=False)
    alone = mtlrec(
        "predict", "run", "--input", "data/alone.csv", "--output", "alone.parquet",
        cwd=tmp_path, env=run_env,
    )  # fmt: skip
    assert alone.returncode == 0, alone.stderr
    without = pq.read_table(tmp_path / "alone.parquet").to_pandas().ctr.to_numpy()
    assert np.abs(without - want).max() > 1e-3
