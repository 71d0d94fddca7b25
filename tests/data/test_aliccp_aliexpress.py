"""aliccp (processed samples + the raw-release converter on generated raw files) and aliexpress:
each prepares and trains for one epoch."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from helpers.datagen import SHARED_DATA, prepare, train
from mtlrec.data.sources.aliccp import DENSE_COLUMNS, SPARSE_FIELDS, convert_raw
from mtlrec.data.spec import DatasetSpec
from mtlrec.errors import MtlrecError

USER_FIELDS = (
    "101",
    "121",
    "122",
    "124",
    "125",
    "126",
    "127",
    "128",
    "129",
    "109_14",
    "110_14",
    "127_14",
    "150_14",
)


def entry(field, feature, value=1.0):
    return f"{field}\x02{feature}\x03{value}"


def write_raw(d, part, n, seed):
    """A skeleton + common-features pair in the Tianchi format (\\x01 \\x02 \\x03 separators)."""
    rng = np.random.default_rng(seed)
    with open(d / f"common_features_{part}.csv", "w") as f:
        for c in range(5):
            feats = [
                entry(k, f"{k}{c}{rng.integers(0, 3)}", round(rng.random(), 3)) for k in USER_FIELDS
            ]
            f.write(f"c{c},{len(feats)},{chr(1).join(feats)}\n")
    with open(d / f"sample_skeleton_{part}.csv", "w") as f:
        for i in range(n):
            click = int(rng.random() < 0.3)
            conversion = int(click and rng.random() < 0.5)
            item_fields = [k for k in SPARSE_FIELDS if k not in USER_FIELDS]
            feats = [
                entry(k, f"{k}_{rng.integers(0, 4)}", round(rng.random(), 3))
                for k in item_fields[:-1]
            ]
            f.write(f"s{i},{click},{conversion},c{i % 5},{len(feats)},{chr(1).join(feats)}\n")


def test_raw_converter_merges_common_features_and_drops_conversions_without_click(tmp_path):
    (tmp_path / "common.csv").write_text(
        f"cf1,2,{entry('101', 'u7', 1.0)}\x01{entry('109_14', 'b3', 0.25)}\n"
    )
    (tmp_path / "skeleton.csv").write_text(
        f"1,1,0,cf1,2,{entry('205', 'i9', 1.0)}\x01{entry('508', 'x2', 0.5)}\x01{entry('205', 'i10', 1.0)}\n"
        f"2,0,1,cf1,1,{entry('205', 'i9', 1.0)}\n"  # conversion without a click: dropped
        f"3,0,0,cf1,0,\n"
    )
    counts = convert_raw(tmp_path / "skeleton.csv", tmp_path / "common.csv", tmp_path / "out.csv")
    assert counts == {"rows": 2, "dropped_conversion_without_click": 1}
    with open(tmp_path / "out.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["click", "purchase", *SPARSE_FIELDS, *DENSE_COLUMNS]
    first = rows[0]
    assert (first["click"], first["purchase"], first["101"], first["205"]) == ("1", "0", "u7", "i9")
    assert (first["508"], first["D508"], first["109_14"], first["D109_14"]) == (
        "x2",
        "0.5",
        "b3",
        "0.25",
    )
    assert first["301"] == "" and first["D702"] == ""  # absent fields are missing values
    assert rows[1]["205"] == "" and rows[1]["101"] == "u7"


def test_raw_converter_errors_name_file_and_line(tmp_path):
    (tmp_path / "common.csv").write_text(f"cf1,1,{entry('101', 'u7')}\n")
    (tmp_path / "skeleton.csv").write_text(f"1,1,0,cf1,1,{entry('205', 'i9')}\n2,0,0,cf404,0,\n")
    with pytest.raises(MtlrecError) as e:
        convert_raw(tmp_path / "skeleton.csv", tmp_path / "common.csv", tmp_path / "out.csv")
    assert (
        str(e.value)
        == f"{tmp_path / 'skeleton.csv'}: line 2: common_feature_index 'cf404' is not in common.csv"
    )
    (tmp_path / "skeleton.csv").write_text("1,1,0\n")
    with pytest.raises(
        MtlrecError, match=r"skeleton.csv: line 1: malformed row, expected 6 comma-separated fields"
    ):
        convert_raw(tmp_path / "skeleton.csv", tmp_path / "common.csv", tmp_path / "out.csv")


def test_aliccp_from_the_raw_release_prepares_and_trains(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    write_raw(raw, "train", 400, 1)
    write_raw(raw, "test", 200, 2)
    result = prepare(
        [f"data_dir={tmp_path}", "dataset=aliccp", "dataset.source=raw", f"dataset.raw_dir={raw}"]
    )
    spec = DatasetSpec.load(result.path)
    assert result.summary["train"].rows == 400
    assert result.summary["val"].rows + result.summary["test"].rows == 200
    assert spec.info["raw_train"] == {"rows": 400, "dropped_conversion_without_click": 0}
    assert not (result.path / "_converted").exists()
    assert (
        spec.info["sources"][0]["file"]
        == f"{raw / 'sample_skeleton_train.csv'} + {raw / 'common_features_train.csv'}"
    )
    assert spec.funnel.click == "click" and spec.funnel.conversion == "purchase"
    vocab = {f.name: f.vocab_size for f in spec.sparse}
    assert vocab["205"] == 5 and vocab["301"] == 2  # 4 item ids + OOV; 301 absent: "" + OOV
    metrics = train(
        tmp_path / "run",
        [f"data_dir={tmp_path}", "dataset=aliccp", "model=esmm", "trainer.epochs=1"],
    )
    assert metrics["status"] == "completed" and 0 <= metrics["metrics"]["test/ctr_auc"] <= 1


ALICCP = SHARED_DATA / "ali-ccp"
ALIEXPRESS = SHARED_DATA / "aliexpress"


@pytest.mark.skipif(not ALICCP.is_dir(), reason="no ../shared/data/ali-ccp")
def test_aliccp_processed_samples_prepare_and_train(tmp_path):
    files = [f"dataset.files.{s}=ali_ccp_{s}_sample.csv" for s in ("train", "val", "test")]
    result = prepare(
        [f"data_dir={tmp_path}", "dataset=aliccp", f"dataset.raw_dir={ALICCP}", *files]
    )
    assert {s: result.summary[s].rows for s in ("train", "val", "test")} == {
        "train": 100,
        "val": 50,
        "test": 50,
    }
    assert result.summary["train"].positives == {
        "ctr": 7.0,
        "cvr": 1.0,
    }  # SOURCE.md: 7 clicks, 1 purchase
    spec = DatasetSpec.load(result.path)
    assert len(spec.sparse) == 23 and len(spec.dense) == 8
    metrics = train(
        tmp_path / "run",
        [f"data_dir={tmp_path}", "dataset=aliccp", "model=mmoe", "trainer.epochs=1"],
    )
    assert metrics["status"] == "completed"


@pytest.mark.skipif(not ALIEXPRESS.is_dir(), reason="no ../shared/data/aliexpress")
def test_aliexpress_samples_prepare_and_train(tmp_path):
    files = [f"dataset.files.{s}=aliexpress_{s}_sample.csv" for s in ("train", "test")]
    result = prepare(
        [f"data_dir={tmp_path}", "dataset=aliexpress", f"dataset.raw_dir={ALIEXPRESS}", *files]
    )
    rows = {s: result.summary[s].rows for s in ("train", "val", "test")}
    assert rows["train"] + rows["val"] == 100 and rows["test"] == 20 and rows["val"] > 0
    spec = DatasetSpec.load(result.path)
    assert len(spec.sparse) == 16 and len(spec.dense) == 63
    assert "search_id" not in [f.name for f in spec.features]
    metrics = train(
        tmp_path / "run",
        [f"data_dir={tmp_path}", "dataset=aliexpress", "model=shared_bottom", "trainer.epochs=1"],
    )
    assert metrics["status"] == "completed"


def test_raw_converter_keeps_every_value_of_bag_fields_with_weights(tmp_path):
    (tmp_path / "common.csv").write_text(
        f"cf1,3,{entry('101', 'u7', 1.0)}\x01{entry('109_14', 'b3', 0.25)}\x01{entry('109_14', 'b5', 2.0)}\n"
    )
    (tmp_path / "skeleton.csv").write_text(
        f"1,1,0,cf1,2,{entry('210', 'n1', 1.0)}\x01{entry('205', 'i9', 1.0)}\x01{entry('210', 'n2', 0.5)}\n"
        f"2,0,0,cf1,1,{entry('205', 'i8', 1.0)}\n"
    )
    convert_raw(
        tmp_path / "skeleton.csv",
        tmp_path / "common.csv",
        tmp_path / "out.csv",
        bags=["109_14", "210"],
    )
    with open(tmp_path / "out.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert "D109_14" not in rows[0] and "D508" in rows[0]
    assert rows[0]["109_14"] == "b3:0.25|b5:2.0" and rows[0]["210"] == "n1:1.0|n2:0.5"
    assert rows[1]["109_14"] == "b3:0.25|b5:2.0" and rows[1]["210"] == ""
    assert rows[0]["101"] == "u7" and rows[1]["205"] == "i8"


def test_aliccp_raw_with_bags_prepares_weighted_bags(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    write_raw(raw, "train", 200, 1)
    write_raw(raw, "test", 100, 2)
    result = prepare(
        [
            f"data_dir={tmp_path}",
            "dataset=aliccp",
            "dataset.source=raw",
            f"dataset.raw_dir={raw}",
            "dataset.bags=['109_14','150_14']",
            "dataset.bag_max_len=4",
        ]
    )
    spec = DatasetSpec.load(result.path)
    bag = spec.feature("109_14")
    assert (bag.kind, bag.weighted, bag.max_len, bag.pool) == ("bag", True, 4, "weighted_sum")
    assert "D109_14" not in [f.name for f in spec.dense] and "D508" in [f.name for f in spec.dense]
    assert spec.layout.weights == {"109_14": (6, 10), "150_14": (10, 14)}
