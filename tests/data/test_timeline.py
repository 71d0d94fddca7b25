"""Logs in time order (mtlrec/data/prepare/timeline.py): the per-user time split and history
sequences built by prepare from the event log, checked against a brute-force reference on a
generated log with many ties, spread over two files and many read blocks."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from mtlrec.data.encoders import encode_raw
from mtlrec.data.loader import load_split
from mtlrec.data.sources import prepare_dataset
from mtlrec.data.spec import DatasetSpec
from mtlrec.errors import MtlrecError

MAX_LEN = 4


def make_log(n: int = 1600, seed: int = 0, unique_times: bool = False) -> pd.DataFrame:
    """user, item, ts (few distinct times: many ties, also within a user), click, row (its number)."""
    rng = np.random.default_rng(seed)
    ts = rng.permutation(n) * 7 + 100 if unique_times else rng.integers(0, 120, n)
    return pd.DataFrame(
        {
            "user": [f"u{u}" for u in rng.zipf(1.5, n) % 70],
            "item": [f"i{i}" for i in rng.integers(0, 25, n)],
            "ts": ts,
            "click": rng.integers(0, 2, n),
            "row": np.arange(n),
        }
    )


def write_log(raw, df: pd.DataFrame) -> list[str]:
    """The log in two files (rows in no time order); returns their names."""
    raw.mkdir(parents=True, exist_ok=True)
    half = len(df) // 2
    df.iloc[:half].to_csv(raw / "a.csv", index=False)
    df.iloc[half:].to_csv(raw / "b.csv", index=False)
    return ["a.csv", "b.csv"]


def log_config(raw, out, **overrides) -> dict:
    cfg = {
        "name": "log",
        "preparer": "csv",
        "path": str(out),
        "raw_dir": str(raw),
        "files": ["a.csv", "b.csv"],
        "block_size_mb": 0.004,  # ~150 rows a block: the log is read in many blocks
        "sparse": ["user", "item"],
        "dense": ["row"],
        "dense_transform": "none",
        "targets": {"ctr": {"label": "click"}},
        "split": {"by": "user_time", "user": "user", "time": "ts", "test": 1, "val": 1},
        "sequences": {
            "hist": {
                "from": {"user": "user", "item": "item", "time": "ts", "max_len": MAX_LEN},
                "pooling": "target_attention",
                "target": "item",
            }
        },
    }
    cfg.update(overrides)
    return cfg


def prepared_rows(out) -> pd.DataFrame:
    """Every prepared row: its raw row number, split and history ids (newest first)."""
    parts = []
    for split in ("train", "val", "test"):
        t = pq.read_table(out / f"{split}.parquet").to_pandas()
        parts.append(
            pd.DataFrame({"row": t["row"].astype(int), "split": split, "history": t.get("hist")})
        )
    return pd.concat(parts).set_index("row").sort_index()


def item_ids(out) -> dict[str, int]:
    v = pq.read_table(out / "vocab.parquet").to_pandas()
    v = v[v.field == "item"]
    return dict(zip(v.value, v.id, strict=True))


def reference_history(df: pd.DataFrame, ids: dict[str, int], max_len: int) -> list[list[int]]:
    """Per row, by brute force: the user's events strictly earlier (ties in file order), the
    newest max_len, newest first, as item ids (0: not in the vocabulary)."""
    out: list[list[int]] = [[] for _ in range(len(df))]
    for _, g in df.sort_values(["ts", "row"], kind="stable").groupby("user"):
        ts, items = g.ts.to_numpy(), [ids.get(i, 0) for i in g.item]
        for row, t in zip(g.row, ts, strict=True):
            earlier = items[: int(np.searchsorted(ts, t, side="left"))]
            out[row] = earlier[::-1][:max_len]
    return out


def earlier_events(df: pd.DataFrame) -> np.ndarray:
    """Per row, how many events its user had strictly before it."""
    t = df.ts.to_numpy()
    count = np.zeros(len(df), int)
    for _, g in df.groupby("user"):
        ts = np.sort(g.ts.to_numpy())
        count[g.row] = np.searchsorted(ts, t[g.row], side="left")
    return count


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("timeline")
    df = make_log()
    write_log(tmp / "raw", df)
    result = prepare_dataset(log_config(tmp / "raw", tmp / "out"))
    return df, tmp / "out", result


def test_built_history_is_the_users_strictly_earlier_events_newest_first(prepared):
    df, out, result = prepared
    rows = prepared_rows(out)
    assert list(rows.index) == list(range(len(df)))  # every event is a row, once
    expected = reference_history(df, item_ids(out), MAX_LEN)
    assert [list(h) for h in rows.history] == expected
    # The check means something: ties are common, and many rows have a full or cut history.
    assert df.duplicated(["user", "ts"]).sum() > 100
    lengths = rows.history.map(len)
    assert (lengths == MAX_LEN).sum() > 200 and (lengths == 0).sum() > 50
    spec = result.spec
    hist = next(f for f in spec.features if f.name == "hist")
    assert (hist.kind, hist.max_len, hist.shares_vocab_with, hist.pooling, hist.target) == (
        "sequence",
        MAX_LEN,
        "item",
        "target_attention",
        "item",
    )
    assert spec.info["sequences_from_log"] == {
        "hist": {"user": "user", "item": "item", "time": "ts", "max_len": MAX_LEN}
    }
    # Rows with more than MAX_LEN earlier events are counted as cut, as for a raw sequence.
    cut = int((earlier_events(df) > MAX_LEN).sum())
    assert sum(result.summary[s].truncated["hist"] for s in result.summary) == cut


def test_no_history_entry_is_at_or_after_its_rows_time(prepared):
    """Decoded through the vocabulary, every history entry is the item of an event of the row's
    user strictly before the row's time (never one the user only had at or after it)."""
    df, out, _ = prepared
    rows = prepared_rows(out)
    value = {i: v for v, i in item_ids(out).items()}
    first_time = df.groupby(["user", "item"]).ts.min().to_dict()  # when a user first had an item
    checked = 0
    for r in df.itertuples():
        for i in rows.history[r.row]:
            if i != 0:
                assert first_time[r.user, value[i]] < r.ts, r.row
                checked += 1
    assert checked > 1000


def test_user_time_split_orders_each_users_events(prepared):
    df, out, result = prepared
    rows = prepared_rows(out)
    df = df.assign(split=rows.split.to_numpy())
    code = df.split.map({"train": 0, "val": 1, "test": 2})
    for user, g in df.assign(code=code).groupby("user"):
        # train < val < test in time, strictly (a tie at a boundary goes to the later split)
        for a, b in ((0, 1), (1, 2), (0, 2)):
            if (g.code == a).any() and (g.code == b).any():
                assert g.ts[g.code == a].max() < g.ts[g.code == b].min(), user
        if len(g) <= 2:  # too few events for test + val + train: all train
            assert (g.code == 0).all()
        else:  # the last event is test; the test rows are the last one and its ties
            assert g.code[g.ts == g.ts.max()].eq(2).all()
            assert (g.code == 2).sum() == (g.ts == g.ts.max()).sum()
    info = result.spec.info["split"]
    sizes = df.groupby("user").size()
    assert info["users"] == len(sizes) and info["users_all_train"] == int((sizes <= 2).sum())
    assert info["users_all_train"] > 0 and (df.split == "val").sum() > 10


def test_fractions_take_a_rounded_down_share_of_each_users_events(tmp_path):
    df = make_log(n=1200, seed=1, unique_times=True)
    write_log(tmp_path / "raw", df)
    split = {"by": "user_time", "user": "user", "time": "ts", "test_fraction": 0.2}
    split["val_fraction"] = 0.1
    out = tmp_path / "out"
    prepare_dataset(log_config(tmp_path / "raw", out, split=split, sequences={}))
    df = df.assign(split=prepared_rows(out).split.to_numpy())
    for _, g in df.sort_values("ts").groupby("user"):
        n = len(g)
        k_test, k_val = int(np.floor(0.2 * n)), int(np.floor(0.1 * n))
        expect = ["train"] * (n - k_test - k_val) + ["val"] * k_val + ["test"] * k_test
        assert g.split.tolist() == expect


def test_predict_builds_the_same_history_as_prepare(prepared):
    """encode_raw (what `mtlrec predict` runs on raw input) on the log: every row's model input,
    history included, equals the prepared row's."""
    df, out, _ = prepared
    spec = DatasetSpec.load(out)
    df.to_csv(out.parent / "all.csv", index=False)  # the whole log as one raw input file
    sparse, dense, _ = encode_raw(out.parent / "all.csv", out)
    by_row = {}
    for split in ("train", "val", "test"):
        t = load_split(out / f"{split}.parquet", spec)
        for i, r in enumerate(t.dense[:, 0].int().tolist()):
            by_row[r] = t.sparse[i]
    assert dense[:, 0].int().tolist() == list(range(len(df)))
    for r in range(len(df)):
        assert sparse[r].tolist() == by_row[r].tolist()


def _error(cfg) -> str:
    with pytest.raises(MtlrecError) as e:
        prepare_dataset(cfg)
    assert "\n" not in str(e.value)
    return str(e.value)


def test_bad_log_configs_are_one_line(tmp_path):
    raw, out = tmp_path / "raw", tmp_path / "out"
    df = make_log(n=300)
    write_log(raw, df)
    seq = log_config(raw, out)["sequences"]
    seq["hist"]["from"]["user"] = "uid"
    assert _error(log_config(raw, out, sequences=seq)).startswith(
        f"{raw / 'a.csv'}: column 'uid' (dataset.sequences.hist.from.user) not found; the file has 5 columns: ['user', 'item', 'ts', 'click', 'row']"
    )
    seq["hist"]["from"] |= {"user": "user", "max_len": 0}
    assert _error(log_config(raw, out, sequences=seq)) == (
        "dataset.sequences.hist.from.max_len must be an integer >= 1, got 0"
    )
    seq["hist"]["from"]["item"] = "click"
    del seq["hist"]["from"]["max_len"]
    assert _error(log_config(raw, out, sequences=seq)) == (
        "dataset.sequences.hist.from.item 'click' is not a sparse column; the history is encoded with that column's vocabulary: add it to dataset.sparse"
    )
    split = {"by": "user_time", "user": "user", "time": "ts", "test": 1, "test_fraction": 0.1}
    assert _error(log_config(raw, out, split=split)) == (
        "dataset.split.by=user_time: give one of dataset.split.test (the last n events of each user) or dataset.split.test_fraction (a share of them)"
    )
    assert not out.exists()


@pytest.mark.parametrize(
    ("value", "line"),
    [
        ("soon", "time column 'ts' holds 'soon': not a number or an ISO 8601 date/time, so the events cannot be put in time order; fix the value or name another time column"),
        ("", "time column 'ts' is empty; every event needs a time"),
    ],
)  # fmt: skip
def test_a_time_that_cannot_be_ordered_names_its_line(tmp_path, value, line):
    raw, out = tmp_path / "raw", tmp_path / "out"
    df = make_log(n=300).astype({"ts": object})
    df.loc[200, "ts"] = value  # b.csv, its data row 51: line 52
    write_log(raw, df)
    assert _error(log_config(raw, out)) == f"{raw / 'b.csv'}: line 52: {line}"


def test_iso_dates_order_like_the_numbers_they_stand_for(tmp_path):
    df = make_log(n=400)
    stamps = pd.Timestamp("2026-01-01T00:00:00Z") + pd.to_timedelta(df.ts * 1000, unit="us")
    dated = df.assign(ts=stamps.dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ"))
    write_log(tmp_path / "raw_n", df)
    write_log(tmp_path / "raw_d", dated)
    a = prepare_dataset(log_config(tmp_path / "raw_n", tmp_path / "n"))
    b = prepare_dataset(log_config(tmp_path / "raw_d", tmp_path / "d"))
    assert {s: a.summary[s].rows for s in a.summary} == {s: b.summary[s].rows for s in b.summary}
    assert prepared_rows(tmp_path / "n").equals(prepared_rows(tmp_path / "d"))
    # A parquet timestamp column (microseconds) orders the same way.
    (tmp_path / "raw_p").mkdir()
    half = len(df) // 2
    stamped = df.assign(ts=stamps.dt.tz_localize(None).astype("datetime64[us]"))
    stamped.iloc[:half].to_parquet(tmp_path / "raw_p" / "a.parquet")
    stamped.iloc[half:].to_parquet(tmp_path / "raw_p" / "b.parquet")
    files = ["a.parquet", "b.parquet"]
    prepare_dataset(log_config(tmp_path / "raw_p", tmp_path / "p", files=files))
    assert prepared_rows(tmp_path / "n").equals(prepared_rows(tmp_path / "p"))


def test_numbers_and_dates_in_one_time_column_are_one_line(tmp_path):
    raw = tmp_path / "raw"
    df = make_log(n=300).astype({"ts": object})
    df.loc[150:, "ts"] = "2026-01-02"  # b.csv holds dates, a.csv numbers
    write_log(raw, df)
    assert _error(log_config(raw, tmp_path / "out")) == (
        f"{raw / 'b.csv'}: line 2: time column 'ts' holds '2026-01-02', a date, where earlier rows hold numbers; use one kind of time value throughout"
    )
