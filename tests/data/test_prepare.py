"""The generic prepare pipeline on generated raw files: vocabularies, OOV, dense transforms,
splits, input formats, streaming, atomic publish and every bad-input message."""

from __future__ import annotations

import gzip
import math
import os
import re

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from helpers.datagen import byo_config, write_events
from mtlrec.data.prepare import row_uniforms
from mtlrec.data.sources import prepare_dataset
from mtlrec.data.spec import DatasetSpec
from mtlrec.errors import MtlrecError


@pytest.fixture
def events(tmp_path):
    return write_events(tmp_path)


def read(out, split):
    return pq.read_table(out / f"{split}.parquet").to_pandas()


def vocab_of(out, field):
    v = pq.read_table(out / "vocab.parquet").to_pandas()
    return v[v.field == field]


def test_vocab_is_fitted_on_train_only_with_min_count_and_one_oov_id(events, tmp_path):
    raw, df = events
    out = tmp_path / "out"
    result = prepare_dataset(byo_config(raw, out))
    spec = DatasetSpec.load(out)
    counts = df.iloc[:600].user.value_counts()
    kept = counts[counts >= 2]
    user = next(f for f in spec.sparse if f.name == "user")
    assert (user.vocab_size, user.oov_id) == (len(kept) + 1, 0)
    uv = vocab_of(out, "user")
    assert uv.id.tolist() == list(range(1, len(kept) + 1))
    assert uv.train_count.tolist() == sorted(kept.tolist(), reverse=True)  # most frequent first
    mapping = dict(zip(uv.value, uv.id, strict=True))
    parts = {"train": df.iloc[:600], "val": df.iloc[600:800], "test": df.iloc[800:]}
    for split, rows in parts.items():
        got = read(out, split)
        assert got.user.tolist() == [mapping.get(u, 0) for u in rows.user]
        assert result.summary[split].rows == len(rows)
        assert result.summary[split].oov["user"] == sum(u not in mapping for u in rows.user)
        assert got.click.tolist() == rows.click.tolist()
        assert got.buy.tolist() == rows.buy.tolist()
    # A value seen only outside train is out of vocabulary even when frequent there.
    val_only = set(df.iloc[600:].user) - set(df.iloc[:600].user)
    assert all(u not in mapping for u in val_only)
    # Missing sparse values are one more value (''), here frequent enough for its own id.
    cv = vocab_of(out, "city")
    assert sorted(cv.value) == ["", "oslo", "paris", "rome"]
    assert [t.name for t in spec.tasks] == ["ctr", "cvr"]
    assert spec.tasks[1].where == "click" and spec.funnel.conversion == "buy"
    assert spec.labels == ("click", "buy")


def test_dense_transforms_use_train_statistics_and_fill_values(events, tmp_path):
    raw, df = events
    out = tmp_path / "out"
    prepare_dataset(byo_config(raw, out, dense_fill=1.5))
    spec = DatasetSpec.load(out)
    train, val = read(out, "train"), read(out, "val")
    assert abs(train.age.mean()) < 1e-5 and abs(train.age.std(ddof=0) - 1) < 1e-4
    price = pd.to_numeric(df.price.replace("", np.nan)).fillna(1.5)
    log_train = np.log1p(price.iloc[:600])
    mean, std = log_train.mean(), log_train.std(ddof=0)
    stats = spec.info["dense"]["price"]
    assert stats["transform"] == "log1p_standardize" and stats["fill"] == 1.5
    assert math.isclose(stats["mean"], mean, rel_tol=1e-9)
    expected_val = (np.log1p(price.iloc[600:800]) - mean) / std
    np.testing.assert_allclose(val.price, expected_val, rtol=1e-5, atol=1e-5)

    out2 = tmp_path / "minmax"
    prepare_dataset(byo_config(raw, out2, dense_transform="minmax", dense_transforms={}))
    t2 = read(out2, "train")
    assert (t2.age.min(), t2.age.max()) == (0.0, 1.0)
    out3 = tmp_path / "none"
    prepare_dataset(
        byo_config(raw, out3, dense_transform="none", dense_transforms={}, dense_fill=-1.0)
    )
    np.testing.assert_allclose(
        read(out3, "test").price,
        pd.to_numeric(df.price.iloc[800:].replace("", np.nan)).fillna(-1.0),
        rtol=1e-6,
    )


def _same_dataset(a, b):
    for name in ("train.parquet", "val.parquet", "test.parquet", "vocab.parquet"):
        assert pq.read_table(a / name).equals(pq.read_table(b / name)), name


@pytest.mark.parametrize("variant", ["tsv.gz", "parquet", "tiny blocks"])
def test_formats_and_block_sizes_give_the_same_dataset(events, tmp_path, variant):
    raw, df = events
    ref = tmp_path / "ref"
    prepare_dataset(byo_config(raw, ref))
    parts = {"train": df.iloc[:600], "val": df.iloc[600:800], "test": df.iloc[800:]}
    overrides = {}
    if variant == "tsv.gz":
        for split, rows in parts.items():
            with gzip.open(raw / f"{split}.tsv.gz", "wt") as f:
                rows.to_csv(f, sep="\t", index=False)
        overrides["files"] = {s: f"{s}.tsv.gz" for s in parts}
    elif variant == "parquet":
        for split, rows in parts.items():
            typed = rows.assign(price=pd.to_numeric(rows.price.replace("", np.nan)))
            typed.to_parquet(raw / f"{split}.parquet", index=False)
        overrides["files"] = {s: f"{s}.parquet" for s in parts}
    else:
        overrides["block_size_mb"] = 0.002  # ~2 KB: dozens of blocks per file
    other = tmp_path / "other"
    prepare_dataset(byo_config(raw, other, **overrides))
    _same_dataset(ref, other)


def test_random_split_is_seeded_streamed_and_follows_the_fractions(events, tmp_path):
    raw, _ = events
    split = {"by": "random", "seed": 3, "fractions": {"train": 0.6, "val": 0.2, "test": 0.2}}
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    ra = prepare_dataset(byo_config(raw, a, files="all.csv", split=split))
    prepare_dataset(byo_config(raw, b, files="all.csv", split=split, block_size_mb=0.002))
    prepare_dataset(byo_config(raw, c, files="all.csv", split={**split, "seed": 4}))
    _same_dataset(a, b)  # the split of a row does not depend on how the file is read
    assert not pq.read_table(a / "train.parquet").equals(pq.read_table(c / "train.parquet"))
    rows = {s: ra.summary[s].rows for s in ("train", "val", "test")}
    assert sum(rows.values()) == 1000
    u = row_uniforms(3, 0, 0, 1000)
    assert rows == {
        "train": int((u < 0.6).sum()),
        "val": int(((u >= 0.6) & (u < 0.8)).sum()),
        "test": int((u >= 0.8).sum()),
    }
    assert abs(rows["train"] - 600) < 60 and abs(rows["val"] - 200) < 45


def test_split_by_time_column_puts_the_oldest_rows_in_train(events, tmp_path):
    raw, df = events
    out = tmp_path / "out"
    split = {"by": "column", "column": "ts", "fractions": {"train": 0.6, "val": 0.2, "test": 0.2}}
    cfg = byo_config(raw, out, files="all.csv", split=split, dense_transform="none")
    cfg["dense_transforms"] = {}
    prepare_dataset(cfg)
    spec = DatasetSpec.load(out)
    assert spec.info["split"]["cuts"] == [1600.0, 1800.0]  # ts is 1000..1999
    assert read(out, "train").age.tolist() == df[df.ts < 1600].age.tolist()
    assert read(out, "val").age.tolist() == df[(df.ts >= 1600) & (df.ts < 1800)].age.tolist()
    assert read(out, "test").age.tolist() == df[df.ts >= 1800].age.tolist()
    assert "ts" not in read(out, "train").columns


def test_existing_dataset_needs_overwrite_and_a_failed_prepare_leaves_nothing(events, tmp_path):
    raw, _ = events
    out = tmp_path / "data" / "events"
    prepare_dataset(byo_config(raw, out))
    with pytest.raises(MtlrecError) as e:
        prepare_dataset(byo_config(raw, out, min_count=1))
    assert str(e.value) == (
        f"{out}: a prepared dataset already exists there; pass overwrite=true to prepare it again"
    )
    prepare_dataset(byo_config(raw, out, min_count=1), overwrite=True)
    replaced = DatasetSpec.load(out)
    assert replaced.info["min_count"] == 1
    with open(raw / "test.csv", "a") as f:
        f.write("1,2,3\n")
    with pytest.raises(MtlrecError, match="malformed row"):
        prepare_dataset(byo_config(raw, out, min_count=3), overwrite=True)
    assert DatasetSpec.load(out).info["min_count"] == 1  # the old copy is untouched
    assert os.listdir(out.parent) == ["events"]  # no temporary dir left behind
    with pytest.raises(MtlrecError, match="malformed row"):
        prepare_dataset(byo_config(raw, tmp_path / "data" / "fresh"))
    assert os.listdir(out.parent) == ["events"]


# -- bad input: one clear line each -----------------------------------------------------------


def _error(cfg) -> str:
    with pytest.raises(MtlrecError) as e:
        prepare_dataset(cfg)
    message = str(e.value)
    assert "\n" not in message
    return message


def test_missing_and_empty_files(events, tmp_path):
    raw, df = events
    out = tmp_path / "out"
    files = {"train": "train.csv", "val": "val.csv", "test": "nope.csv"}
    assert _error(byo_config(raw, out, files=files)) == (
        f"{raw / 'nope.csv'}: raw file (dataset.files.test) not found; put it there or set dataset.raw_dir / dataset.files.test"
    )
    (raw / "empty.csv").write_text("")
    files["test"] = "empty.csv"
    assert _error(byo_config(raw, out, files=files)) == (
        f"{raw / 'empty.csv'}: the raw file (dataset.files.test) is empty (0 bytes)"
    )
    df.iloc[:0].to_csv(raw / "header_only.csv", index=False)
    files["test"] = "header_only.csv"
    assert _error(byo_config(raw, out, files=files)) == (
        f"{raw / 'header_only.csv'}: the raw file has no data rows"
    )
    assert not out.exists()


def test_missing_column_is_named(events, tmp_path):
    raw, df = events
    df.iloc[600:800].drop(columns=["price"]).to_csv(raw / "val.csv", index=False)
    message = _error(byo_config(raw, tmp_path / "out"))
    assert message.startswith(
        f"{raw / 'val.csv'}: column(s) ['price'] not found; the file has 7 columns: ['ts', 'user'"
    )


def test_malformed_row_names_file_and_line(events, tmp_path):
    raw, df = events
    text = (raw / "val.csv").read_text().splitlines()
    text.insert(51, "1,u1,3")  # becomes line 52
    (raw / "val.csv").write_text("\n".join(text) + "\n")
    assert _error(byo_config(raw, tmp_path / "out")) == (
        f"{raw / 'val.csv'}: line 52: malformed row, expected 8 columns, got 3: '1,u1,3'"
    )


def test_binary_label_outside_0_1_names_file_line_and_task(events, tmp_path):
    raw, df = events
    bad = df.iloc[:600].copy()
    bad.loc[10, "click"] = 2
    bad.to_csv(raw / "train.csv", index=False)
    assert _error(byo_config(raw, tmp_path / "out")) == (
        f"{raw / 'train.csv'}: line 12: label column 'click' of binary task 'ctr' holds 2; binary labels must be 0 or 1"
    )


def test_label_column_listed_as_a_feature(events, tmp_path):
    raw, _ = events
    cfg = byo_config(raw, tmp_path / "out", sparse=["user", "item", "click"])
    assert _error(cfg) == (
        "dataset.sparse lists 'click', the label column of task 'ctr'; a label column cannot also be a feature: remove it from dataset.sparse"
    )
    cfg = byo_config(raw, tmp_path / "out", dense=["price", "buy"])
    assert "dataset.dense lists 'buy', the label column of task 'cvr'" in _error(cfg)


def test_non_numeric_dense_value_names_its_line(events, tmp_path):
    raw, df = events
    bad = df.iloc[:600].copy()
    bad.loc[4, "price"] = "cheap"
    bad.to_csv(raw / "train.csv", index=False)
    assert _error(byo_config(raw, tmp_path / "out")) == (
        f"{raw / 'train.csv'}: line 6: dense column 'price' holds 'cheap', not a number"
    )


def test_config_mistakes(events, tmp_path):
    raw, _ = events
    out = tmp_path / "out"
    assert _error(byo_config(raw, out, dense_transform="zscore")) == (
        "dense transform 'zscore' of column 'age' is unknown; use one of ['none', 'standardize', 'log1p_standardize', 'minmax']"
    )
    split = {"by": "random", "fractions": {"train": 0.7, "val": 0.2}}
    assert re.fullmatch(
        r"dataset.split.fractions: shares must sum to 1, got 0.9 .*",
        _error(byo_config(raw, out, files="all.csv", split=split)),
    )
    files = {"train": "train.csv", "test": "test.csv"}
    assert _error(byo_config(raw, out, files=files)) == (
        "dataset 'events': no rows go to split(s) ['val']; give a file for each or split one by fractions"
    )
    # ...which a file entry with fractions fixes: the test file split 1:1 into val and test.
    files["test"] = {"file": "test.csv", "fractions": {"val": 0.5, "test": 0.5}}
    result = prepare_dataset(byo_config(raw, out, files=files))
    assert result.summary["val"].rows + result.summary["test"].rows == 200


def test_prepare_command_needs_a_dataset():
    from mtlrec.commands.prepare import main

    with pytest.raises(MtlrecError) as e:
        main(["overwrite=true"])
    assert str(e.value) == (
        "say which dataset to prepare, e.g. `mtlrec prepare dataset=census`; built in: aliccp, aliexpress, census, mmoe_synthetic, movielens"
    )
