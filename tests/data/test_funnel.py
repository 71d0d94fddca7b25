"""Funnel consistency (a conversion needs a click), one rule on every path: prepare, the Ali-CCP
raw converter and processed CSVs, the in-memory loader and the streaming reader."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from helpers.datagen import byo_config, make_events
from mtlrec.data.loader import load_split
from mtlrec.data.sources import prepare_dataset
from mtlrec.data.sources.aliccp import DENSE_COLUMNS, SPARSE_FIELDS, convert_raw
from mtlrec.data.spec import DatasetSpec, FeatureSpec, FunnelSpec, TaskSpec
from mtlrec.data.streaming import StreamingSplit
from mtlrec.errors import MtlrecError

HINT = "a later step needs the earlier one: fix the labels, or set dataset.funnel_violations=drop to drop these rows"


def events_with_violations(tmp_path):
    """The events log with buy=1, click=0 in 2 train rows and 1 val row."""
    df = make_events(1000)
    for i in (3, 10, 650):
        df.loc[i, ["click", "buy"]] = [0, 1]
    raw = tmp_path / "raw"
    raw.mkdir()
    df.iloc[:600].to_csv(raw / "train.csv", index=False)
    df.iloc[600:800].to_csv(raw / "val.csv", index=False)
    df.iloc[800:].to_csv(raw / "test.csv", index=False)
    return raw, df


def test_prepare_stops_with_one_line_counting_the_violations(tmp_path):
    raw, _ = events_with_violations(tmp_path)
    out = tmp_path / "out"
    with pytest.raises(MtlrecError) as e:
        prepare_dataset(byo_config(raw, out))
    assert str(e.value) == (
        f"dataset 'events': funnel violated: 3 rows with buy=1 but click=0 (of 1,000 rows); {HINT}"
    )
    assert not out.exists() and list(tmp_path.iterdir()) == [raw]


def test_prepare_drops_and_counts_them_when_the_config_says_drop(tmp_path):
    raw, df = events_with_violations(tmp_path)
    out = tmp_path / "out"
    result = prepare_dataset(byo_config(raw, out, funnel_violations="drop"))
    assert {s: result.summary[s].rows for s in ("train", "val", "test")} == {
        "train": 598,
        "val": 199,
        "test": 200,
    }
    assert {s: result.summary[s].dropped for s in ("train", "val", "test")} == {
        "train": 2,
        "val": 1,
        "test": 0,
    }
    spec = DatasetSpec.load(out)
    assert spec.info["funnel_violations"] == {"policy": "drop", "dropped": {"train": 2, "val": 1}}
    for split in ("train", "val", "test"):
        t = pd.read_parquet(out / f"{split}.parquet")
        assert not ((t.buy == 1) & (t.click == 0)).any()
    # the dropped rows are not fitted either: train counts are of the 598 kept rows
    vocab = pd.read_parquet(out / "vocab.parquet")
    kept = df.iloc[:600].drop(index=[3, 10])
    assert vocab[vocab.field == "item"].train_count.sum() == len(kept)


SPEC = DatasetSpec(
    name="toy",
    features=(FeatureSpec("u", "sparse", 4), FeatureSpec("x", "dense")),
    labels=("click", "buy"),
    tasks=(TaskSpec("ctr", "click"), TaskSpec("cvr", "buy", where="click")),
    funnel=FunnelSpec("click", "buy"),
    splits={"train": "train.parquet"},
)


def toy_split(tmp_path, n=40):
    rng = np.random.default_rng(0)
    click = rng.integers(0, 2, size=n)
    buy = click * rng.integers(0, 2, size=n)
    buy[[1, 5]] = 1
    click[[1, 5]] = 0
    df = pd.DataFrame(
        {"u": rng.integers(0, 4, size=n), "x": rng.normal(size=n), "click": click, "buy": buy}
    )
    path = tmp_path / "train.parquet"
    df.to_parquet(path, row_group_size=16)
    return path, df


def test_loader_stops_or_drops_by_the_same_rule(tmp_path):
    path, df = toy_split(tmp_path)
    with pytest.raises(MtlrecError) as e:
        load_split(path, SPEC, SPEC.tasks)
    assert (
        str(e.value)
        == f"{path}: funnel violated: 2 rows with buy=1 but click=0 (of 40 rows); {HINT}"
    )
    split = load_split(path, SPEC, SPEC.tasks, funnel_violations="drop")
    assert len(split) == 38
    keep = ~((df.buy == 1) & (df.click == 0)).to_numpy()
    assert split.dense[:, 0].tolist() == df.x.to_numpy(np.float32)[keep].tolist()
    with pytest.raises(MtlrecError) as e:
        load_split(path, SPEC, SPEC.tasks, funnel_violations="keep")
    assert str(e.value) == "dataset.funnel_violations='keep': expected one of error, drop"


def test_a_chain_task_is_checked_without_a_funnel(tmp_path):
    path, _ = toy_split(tmp_path)
    spec = DatasetSpec("toy", SPEC.features, SPEC.labels, SPEC.tasks, splits=SPEC.splits)
    with pytest.raises(MtlrecError, match=r"2 rows with buy=1 but click=0"):
        load_split(path, spec, spec.tasks)
    load_split(path, spec, (TaskSpec("ctr", "click"),))  # no task chains buy after click


def test_streaming_stops_before_the_first_batch_or_drops(tmp_path):
    path, df = toy_split(tmp_path)
    with pytest.raises(MtlrecError) as e:
        StreamingSplit(path, SPEC, SPEC.tasks, shuffle_buffer=8, read_rows=8)
    assert (
        str(e.value)
        == f"{path}: funnel violated: 2 rows with buy=1 but click=0 (of 40 rows); {HINT}"
    )
    stream = StreamingSplit(
        path, SPEC, SPEC.tasks, shuffle_buffer=8, read_rows=8, funnel_violations="drop"
    )
    assert len(stream) == 38
    batches = list(stream.batches(5, torch.Generator().manual_seed(0)))
    assert sum(len(b) for b in batches) == 38
    labels = torch.cat([b.labels for b in batches])
    assert not ((labels[:, 1] == 1) & (labels[:, 0] == 0)).any()
    stream.close()


def entry(field, feature, value=1.0):
    return f"{field}\x02{feature}\x03{value}"


def test_aliccp_raw_converter_follows_the_rule(tmp_path):
    (tmp_path / "common.csv").write_text(f"cf1,1,{entry('101', 'u7')}\n")
    (tmp_path / "skeleton.csv").write_text(
        f"1,1,0,cf1,1,{entry('205', 'i1')}\n"
        f"2,0,1,cf1,1,{entry('205', 'i9')}\n"  # conversion without a click
        f"3,1,1,cf1,1,{entry('205', 'i2')}\n"
    )
    args = (tmp_path / "skeleton.csv", tmp_path / "common.csv", tmp_path / "out.csv")
    with pytest.raises(MtlrecError) as e:
        convert_raw(*args, funnel_violations="error")
    assert str(e.value) == (
        f"{tmp_path / 'skeleton.csv'}: funnel violated: 1 row with conversion=1 but click=0 (of 3 rows); {HINT}"
    )
    assert convert_raw(*args, funnel_violations="drop") == {
        "rows": 2,
        "dropped_conversion_without_click": 1,
    }


def write_processed(raw, n=300, seed=0):
    rng = np.random.default_rng(seed)
    for split in ("train", "val", "test"):
        click = rng.integers(0, 2, size=n)
        purchase = click * rng.integers(0, 2, size=n)
        if split == "val":
            click[[0, 1]], purchase[[0, 1]] = 0, 1
        df = pd.DataFrame({"click": click, "purchase": purchase})
        for f in SPARSE_FIELDS:
            df[f] = rng.integers(0, 5, size=n)
        for c in DENSE_COLUMNS:
            df[c] = rng.random(n)
        df.to_csv(raw / f"ali_ccp_{split}.csv", index=False)


def test_aliccp_processed_csvs_follow_the_rule(tmp_path):
    from helpers.datagen import prepare

    raw = tmp_path / "raw"
    raw.mkdir()
    write_processed(raw)
    base = ["dataset=aliccp", f"dataset.raw_dir={raw}", f"dataset.path={tmp_path / 'out'}"]
    with pytest.raises(MtlrecError) as e:
        prepare([*base, "dataset.funnel_violations=error"])
    assert str(e.value) == (
        f"dataset 'aliccp': funnel violated: 2 rows with purchase=1 but click=0 (of 900 rows); {HINT}"
    )
    result = prepare(base)  # conf/dataset/aliccp.yaml: drop
    assert result.summary["val"].dropped == 2 and result.summary["val"].rows == 298


def test_the_esm2_action_needs_a_click_but_a_purchase_needs_no_action(tmp_path):
    """funnel.action adds click -> action; buying without a cart/wish (the O path) is allowed."""
    from mtlrec.data.funnel import funnel_pairs

    rng = np.random.default_rng(1)
    click = rng.integers(0, 2, size=40)
    df = pd.DataFrame(
        {
            "u": rng.integers(0, 4, size=40),
            "x": rng.normal(size=40),
            "click": click,
            "buy": click,  # every click buys ...
            "cart": np.zeros(40, dtype=np.int64),  # ... with no cart: fine
        }
    )
    df.loc[[2, 7, 9], ["click", "buy", "cart"]] = [0, 0, 1]  # 3 carts without a click
    path = tmp_path / "train.parquet"
    df.to_parquet(path)
    funnel = FunnelSpec("click", "buy", action="cart")
    spec = DatasetSpec(
        "toy", SPEC.features, ("click", "buy", "cart"), SPEC.tasks, funnel, SPEC.splits
    )
    assert funnel_pairs(funnel, spec.tasks) == [("click", "buy"), ("click", "cart")]
    with pytest.raises(MtlrecError) as e:
        load_split(path, spec, spec.tasks)
    assert (
        str(e.value)
        == f"{path}: funnel violated: 3 rows with cart=1 but click=0 (of 40 rows); {HINT}"
    )
    assert len(load_split(path, spec, spec.tasks, funnel_violations="drop")) == 37


def test_a_funnel_action_must_be_a_label():
    with pytest.raises(MtlrecError) as e:
        DatasetSpec(
            "toy", SPEC.features, SPEC.labels, SPEC.tasks, FunnelSpec("click", "buy", action="cart")
        ).validate("spec.json")
    assert str(e.value) == "spec.json: funnel column 'cart' is not among labels ['click', 'buy']"
