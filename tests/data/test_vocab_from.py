"""dataset.vocab_from=PREPARED_DIR (mtlrec.data.prepare.extend) and init_from across two
vocabularies (mtlrec.training.carry_rows): old values keep their ids, new ones are appended,
hashed fields keep theirs; embedding rows follow their raw values."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch

from helpers.days import make_day, write_day
from mtlrec.data.sources import prepare_dataset
from mtlrec.data.spec import DatasetSpec
from mtlrec.data.vocabulary import read_vocabularies
from mtlrec.errors import MtlrecError


def config(raw: Path, out: Path, **extra) -> dict:
    cfg = {
        "name": "days",
        "preparer": "csv",
        "path": str(out),
        "raw_dir": str(raw),
        "files": {"train": "train.parquet", "val": "val.parquet", "test": "test.parquet"},
        "sparse": ["user", "item", "category"],
        "dense": ["price"],
        "hash_buckets": {"category": 16},
        "targets": {"click": {"label": "click"}, "like": {"label": "like"}},
        "split": {"by": "files"},
    }
    return {**cfg, **extra}


@pytest.fixture(scope="module")
def days(tmp_path_factory):
    """Day 1 prepared; day 2 prepared with vocab_from day 1, and on its own."""
    root = tmp_path_factory.mktemp("days")
    for day in (1, 2):
        write_day(root / f"raw{day}", day, rows=1500)
    prepare_dataset(config(root / "raw1", root / "day1"))
    prepare_dataset(config(root / "raw2", root / "day2", vocab_from=str(root / "day1")))
    prepare_dataset(config(root / "raw2", root / "alone2"))
    return root


def test_old_values_keep_their_ids_and_new_ones_come_after(days):
    old, new = read_vocabularies(days / "day1"), read_vocabularies(days / "day2")
    alone = read_vocabularies(days / "alone2")
    for name in ("user", "item"):
        assert new[name][: len(old[name])] == old[name]  # id i: the same value
        added = new[name][len(old[name]) :]
        assert added and not set(added) & set(old[name])
        assert set(new[name]) == set(old[name]) | set(alone[name])  # nothing lost
    assert "category" not in new  # hashed: no vocabulary
    spec1, spec2 = DatasetSpec.load(days / "day1"), DatasetSpec.load(days / "day2")
    assert spec2.feature("category").vocab_size == spec1.feature("category").vocab_size == 17
    info = spec2.info["vocab_from"]
    assert info["path"] == str((days / "day1").resolve())
    assert info["vocab_sizes"] == {"user": 61, "item": 41, "category": 17}
    assert info["added"] == {n: len(new[n]) - len(old[n]) for n in ("user", "item")}


def test_encoded_rows_use_the_kept_ids(days):
    """A raw value of day 2 is encoded with its day-1 id; the hashed field with the same id."""
    old = {
        n: {v: i + 1 for i, v in enumerate(vs)}
        for n, vs in read_vocabularies(days / "day1").items()
    }
    raw = make_day(2, 1500).iloc[:1050]  # day 2's train rows, as write_day split them
    enc = pq.read_table(days / "day2" / "train.parquet").to_pandas()
    enc1 = pq.read_table(days / "day1" / "train.parquet").to_pandas()
    raw1 = make_day(1, 1500).iloc[:1050]
    for name in ("user", "item"):
        known = raw[name].isin(old[name]).to_numpy()
        assert known.any() and (~known).any()
        want = raw[name][known].map(old[name]).to_numpy()
        assert (enc[name].to_numpy()[known] == want).all()
        assert (enc[name].to_numpy()[~known] > len(old[name])).all()
    day1_ids = dict(zip(raw1["category"], enc1["category"], strict=True))
    assert all(
        day1_ids.get(v, i) == i for v, i in zip(raw["category"], enc["category"], strict=True)
    )


@pytest.mark.parametrize(
    "change, line",
    [
        (
            {"sparse": ["user", "item"], "hash_buckets": None},
            "its embedded fields differ from this dataset's (only here: [], only there: "
            "['category']); extend a dataset with the same fields, or prepare without vocab_from",
        ),
        (
            {"hash_buckets": {"category": 32}},
            "field 'category' is hashed into 16 buckets there and 32 here, so its ids cannot be "
            "kept; use the same dataset.hash_buckets, or prepare without vocab_from",
        ),
    ],
)
def test_what_cannot_be_extended_is_one_line_and_writes_nothing(days, tmp_path, change, line):
    out = tmp_path / "day2"
    cfg = config(days / "raw2", out, vocab_from=str(days / "day1"), **change)
    with pytest.raises(MtlrecError) as e:
        prepare_dataset(cfg)
    assert str(e.value) == f"dataset.vocab_from={days / 'day1'}: {line}"
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_a_missing_or_unprepared_vocab_from_is_one_line(days, tmp_path):
    with pytest.raises(MtlrecError) as e:
        prepare_dataset(config(days / "raw2", tmp_path / "x", vocab_from=str(tmp_path / "no")))
    assert str(e.value) == (
        f"dataset.vocab_from={tmp_path / 'no'}: no such directory; give the dir of a prepared dataset"
    )
    with pytest.raises(MtlrecError) as e:
        prepare_dataset(config(days / "raw2", tmp_path / "x", vocab_from=str(days / "raw1")))
    assert str(e.value) == (
        f"dataset.vocab_from={days / 'raw1'}: not a dataset prepared by `mtlrec prepare` (no "
        "spec.json and vocab.parquet); give the dir of one"
    )


FROZEN = "init.freeze=[embedding.*, interaction.first_order.weight]"  # they stay as carried


def test_init_from_carries_rows_by_raw_value_across_independent_vocabularies(days, tmp_path):
    """Day 2 prepared on its own gives the values other ids: the rows of the table and DeepFM's
    first-order columns follow the values."""
    from helpers.datagen import train

    run1 = tmp_path / "run1"
    base = ["model=mmoe", "model.backbone=deepfm", "dataset=prepared", "trainer.epochs=1"]
    train(run1, [*base, f"dataset.path={days / 'day1'}"])
    run2 = tmp_path / "run2"
    metrics = train(
        run2,
        [*base, f"dataset.path={days / 'alone2'}", f"init_from={run1}", FROZEN],
    )
    init = metrics["init"]
    old_vocab, new_vocab = read_vocabularies(days / "day1"), read_vocabularies(days / "alone2")
    both = {n: set(old_vocab[n]) & set(new_vocab[n]) for n in ("user", "item")}
    assert init["fields"]["user"] == {"carried": 1 + len(both["user"]), "rows": 86}
    assert init["fields"]["category"] == {"carried": 17, "rows": 17}
    table = "embedding.tables.0.weight"
    assert init["rows"][table]["carried"] == sum(f["carried"] for f in init["fields"].values())
    s1 = torch.load(run1 / "checkpoints/best.pt", weights_only=True)["model_state"]
    s2 = torch.load(run2 / "checkpoints/best.pt", weights_only=True)["model_state"]
    first = "interaction.first_order.weight"  # [1, ids]: a column per id
    assert init["rows"][first]["carried"] == init["rows"][table]["carried"]
    assert s1[first].abs().sum() > 0  # trained on day 1 (it starts at 0)
    spec1, spec2 = DatasetSpec.load(days / "day1"), DatasetSpec.load(days / "alone2")
    for name in ("user", "item"):
        o, n = spec1.vocab_offsets[name], spec2.vocab_offsets[name]
        for value in both[name]:
            i, j = o + old_vocab[name].index(value) + 1, n + new_vocab[name].index(value) + 1
            assert torch.equal(s1[table][i], s2[table][j]), (name, value)
            assert torch.equal(s1[first][:, i], s2[first][:, j]), (name, value)
    assert json.loads((run1 / "metrics.json").read_text())["status"] == "completed"


def test_a_rehashed_field_is_skipped_with_its_reason(days):
    import dataclasses

    from mtlrec.training.carry_rows import field_map

    old = DatasetSpec.load(days / "day1").feature("category")
    new = dataclasses.replace(old, hash_buckets=32, vocab_size=33)
    assert field_map(new, old, {}, {}) == (
        "hashed into 16 buckets there, 32 here: its ids cannot be matched, its rows start as "
        "initialised"
    )


def test_the_old_dataset_gone_or_prepared_again_is_one_line(days, tmp_path):
    from mtlrec.training.carry_rows import old_dataset_dir

    ckpt = tmp_path / "run/checkpoints/best.pt"
    for where, state in (
        (tmp_path / "gone", "is not there"),
        (days / "day1", "was prepared again since"),
    ):
        payload = {"config": {"dataset": {"path": str(where)}}, "dataset_fingerprint": "fp1:00"}
        with pytest.raises(MtlrecError) as e:
            old_dataset_dir(payload, ckpt)
        assert str(e.value) == (
            f"init_from: {ckpt} was trained on the dataset at {where}, which {state}: its "
            "vocabulary is needed to carry the embedding rows over by value; bring that dataset "
            "back, or leave the tables out with 'init.exclude=[*embedding*]'"
        )
