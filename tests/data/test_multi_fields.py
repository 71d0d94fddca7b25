"""Bags, weighted bags, sequences, hashed fields and string labels through prepare -> loader ->
streaming, and raw rows encoded exactly like prepare (encode_raw)."""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch

from helpers.multidata import rich_config, write_rich_csv
from mtlrec.data.encoders import encode_raw
from mtlrec.data.loader import load_split
from mtlrec.data.prepare.hashing import hashed_ids, stable_hash
from mtlrec.data.sources import prepare_dataset
from mtlrec.data.spec import DatasetSpec
from mtlrec.data.streaming import StreamingSplit
from mtlrec.errors import MtlrecError

SPLITS = ("train", "val", "test")


@pytest.fixture(scope="module")
def rich(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("rich")
    frames = {
        s: write_rich_csv(tmp / f"{s}.csv", seed=i, start=1000 * i) for i, s in enumerate(SPLITS)
    }
    cfg = rich_config(tmp, {s: f"{s}.csv" for s in SPLITS})
    result = prepare_dataset(cfg)
    return tmp, frames, cfg, result


def vocab_of(tmp, field):
    v = pq.read_table(tmp / "prepared" / "vocab.parquet").to_pandas()
    v = v[v.field == field]
    return dict(zip(v.value, v.id, strict=True))


def test_spec_kinds_layout_and_vocabularies(rich):
    tmp, frames, _, result = rich
    spec = DatasetSpec.load(tmp / "prepared")
    kinds = {f.name: f.kind for f in spec.features}
    assert kinds == {
        "user": "sparse", "item": "sparse", "device": "sparse", "genres": "bag",
        "tags": "bag", "history": "sequence", "price": "dense",
    }  # fmt: skip
    assert spec.layout.sparse == {
        "user": (0, 1), "item": (1, 2), "device": (2, 3), "genres": (3, 6),
        "tags": (6, 10), "history": (10, 15),
    }  # fmt: skip
    assert spec.layout.weights == {"tags": (1, 5)} and spec.layout.dense_width == 5
    train = frames["train"]
    genres = {g for cell in train.genres.fillna("") for g in cell.split("|") if g}
    assert spec.feature("genres").vocab_size == len(genres) + 1
    assert spec.feature("history").vocab_size == spec.feature("item").vocab_size
    assert spec.feature("device").vocab_size == 65 and spec.feature("device").hash_buckets == 64
    assert spec.feature_groups == {"user_side": ["user", "history"]}
    # truncation counted per split: cells with more than max_len values
    for s in SPLITS:
        n_cut = sum(len([g for g in c.split("|") if g]) > 3 for c in frames[s].genres.fillna(""))
        assert result.summary[s].truncated["genres"] == n_cut
        assert spec.info["truncated_rows"]["genres"][s] == n_cut


def test_bag_ids_sequence_newest_first_weights_and_string_labels(rich):
    tmp, frames, _, result = rich
    spec = result.spec
    test = load_split(tmp / "prepared" / "test.parquet", spec, spec.tasks)
    df = frames["test"].fillna("")
    off = spec.vocab_offsets
    items, genres, tags = vocab_of(tmp, "item"), vocab_of(tmp, "genres"), vocab_of(tmp, "tags")
    for r in range(40):
        row = df.iloc[r]
        want = [genres.get(g, 0) + off["genres"] for g in row.genres.split("|") if g][:3]
        got = test.sparse[r, 3:6].tolist()
        assert got == want + [-1] * (3 - len(want))
        hist = [h for h in row.history.split("|") if h][::-1][:5]  # newest (last) first
        want = [items.get(h, 0) + off["item"] for h in hist]
        assert test.sparse[r, 10:15].tolist() == want + [-1] * (5 - len(want))
        pairs = [p.split(":") for p in row.tags.split("|")][:4]
        assert test.sparse[r, 6 : 6 + len(pairs)].tolist() == [
            tags.get(t, 0) + off["tags"] for t, _ in pairs
        ]
        assert test.dense[r, 1 : 1 + len(pairs)].tolist() == [float(w) for _, w in pairs]
        assert test.dense[r, 1 + len(pairs) : 5].tolist() == [0.0] * (4 - len(pairs))
        assert test.labels[r].tolist() == [float(row.income == ">50K"), float(row.rating)]


def reference_hash(text: str) -> int:
    """FNV-1a 64 + splitmix64's finalizer, in plain Python integers."""
    m = (1 << 64) - 1
    h = 0xCBF29CE484222325
    for b in text.encode():
        h = ((h ^ b) * 0x100000001B3) & m
    h ^= h >> 30
    h = (h * 0xBF58476D1CE4E5B9) & m
    h ^= h >> 27
    h = (h * 0x94D049BB133111EB) & m
    return h ^ (h >> 31)


def test_stable_hash_matches_the_reference_and_hashed_ids_are_in_the_parquet(rich):
    import pyarrow as pa

    words = ["", "a", "device-42", "é漢字", "a" * 70]
    assert stable_hash(pa.array(words)).tolist() == [reference_hash(w) for w in words]
    assert hashed_ids(pa.array(words), 10).tolist() == [1 + reference_hash(w) % 10 for w in words]
    tmp, frames, _, result = rich
    ids = pq.read_table(tmp / "prepared" / "val.parquet", columns=["device"]).column(0).to_pylist()
    assert ids == [1 + reference_hash(d) % 64 for d in frames["val"].device]


def test_hash_collision_estimate_in_the_summary(tmp_path):
    frames = {s: write_rich_csv(tmp_path / f"{s}.csv", n=300, seed=i) for i, s in enumerate(SPLITS)}
    cfg = rich_config(tmp_path, {s: f"{s}.csv" for s in SPLITS})
    cfg["hash_buckets"] = {"device": 100_000}
    est = prepare_dataset(cfg).spec.info["hashing"]["device"]
    distinct = frames["train"].device.nunique()
    taken = len({reference_hash(d) % 100_000 for d in frames["train"].device.unique()})
    assert est["taken"] == taken
    assert abs(est["estimated_distinct"] - distinct) < 2
    assert est["estimated_colliding_values"] == pytest.approx(
        est["estimated_distinct"] - taken, abs=0.1
    )


def test_encode_raw_equals_the_prepared_rows_bit_for_bit(rich):
    tmp, frames, _, result = rich
    spec = result.spec
    test = load_split(tmp / "prepared" / "test.parquet", spec, spec.tasks)
    sparse, dense, report = encode_raw(tmp / "test.csv", tmp / "prepared")
    assert torch.equal(sparse, test.sparse) and torch.equal(dense, test.dense)
    assert torch.equal(report.labels, test.labels)
    assert report.truncated == result.summary["test"].truncated
    frame = pd.read_csv(tmp / "test.csv", dtype=str).drop(columns=["income", "rating"])
    sparse2, dense2, report2 = encode_raw(frame, tmp / "prepared")
    assert torch.equal(sparse2, test.sparse) and torch.equal(dense2, test.dense)
    assert report2.labels is None


def test_encoders_json_holds_the_input_layout(rich):
    import json

    tmp, _, _, result = rich
    doc = json.loads((tmp / "prepared" / "encoders.json").read_text())
    assert doc["replayable"] is True and doc["hash_buckets"] == {"device": 64}
    assert doc["layout"]["sparse"]["history"] == [10, 15] and doc["layout"]["pad_id"] == -1
    assert doc["layout"]["vocab_offsets"]["history"] == doc["layout"]["vocab_offsets"]["item"]
    assert doc["label_maps"] == {"income": {"positive": [">50K"], "negative": ["<=50K"]}}
    assert doc["dense"]["price"]["transform"] == "standardize"


def test_encode_raw_maps_unseen_values_to_oov_and_counts_them(rich):
    tmp, _, _, result = rich
    spec = result.spec
    frame = pd.read_csv(tmp / "test.csv", dtype=str).head(3)
    frame.loc[0, "user"] = "never-seen"
    frame.loc[1, "genres"] = "action|unheard-of|also-new"
    sparse, _, report = encode_raw(frame, tmp / "prepared")
    assert sparse[0, 0].item() == spec.vocab_offsets["user"] + 0
    genres = vocab_of(tmp, "genres")
    off = spec.vocab_offsets["genres"]
    assert sparse[1, 3:6].tolist() == [genres["action"] + off, off, off]  # unseen -> id 0
    assert report.oov["user"] == 1 and report.oov["genres"] == 2 and report.rows == 3


def test_streaming_yields_the_in_memory_rows(rich):
    tmp, _, _, result = rich
    spec = result.spec
    path = tmp / "prepared" / "train.parquet"
    whole = load_split(path, spec, spec.tasks)
    stream = StreamingSplit(path, spec, spec.tasks, shuffle=False, read_rows=64)
    batches = list(stream.batches(100, torch.Generator().manual_seed(0)))
    assert torch.equal(torch.cat([b.sparse for b in batches]), whole.sparse)
    assert torch.equal(torch.cat([b.dense for b in batches]), whole.dense)


def test_a_label_outside_positive_and_negative_is_one_line(tmp_path):
    for i, s in enumerate(SPLITS):
        df = write_rich_csv(tmp_path / f"{s}.csv", n=50, seed=i)
        if s == "val":
            df.loc[7, "income"] = "maybe"
            df.to_csv(tmp_path / f"{s}.csv", index=False)
    cfg = rich_config(tmp_path, {s: f"{s}.csv" for s in SPLITS})
    with pytest.raises(MtlrecError) as e:
        prepare_dataset(cfg)
    assert str(e.value) == (
        f"{tmp_path / 'val.csv'}: line 9: label column 'income' holds 'maybe', neither a positive ['>50K'] "
        "nor a negative ['<=50K'] value; add it to the target's positive or negative list"
    )
    assert not (tmp_path / "prepared").exists()
    cfg2 = copy.deepcopy(cfg)
    del cfg2["targets"]["rich"]["negative"]  # without negatives, anything but >50K is 0
    prepare_dataset(cfg2)
    labels = pq.read_table(tmp_path / "prepared" / "val.parquet", columns=["income"]).column(0)
    assert labels.to_pylist()[7] == 0.0


def test_column_patterns_and_their_errors(tmp_path):
    for i, s in enumerate(SPLITS):
        df = write_rich_csv(tmp_path / f"{s}.csv", n=60, seed=i)
        for k in range(3):
            df[f"x{k}"] = np.arange(60) * (k + 1)
        df.to_csv(tmp_path / f"{s}.csv", index=False)
    cfg = rich_config(tmp_path, {s: f"{s}.csv" for s in SPLITS})
    cfg["dense"] = ["price", {"pattern": "x[0-9]+"}]
    spec = prepare_dataset(cfg).spec
    assert [f.name for f in spec.dense] == ["price", "x0", "x1", "x2"]
    cfg["dense"] = [{"glob": "z*"}]
    cfg["path"] = str(tmp_path / "other")
    with pytest.raises(
        MtlrecError, match=r"^dataset.dense: glob 'z\*' matches no column; the file has \['user'"
    ):
        prepare_dataset(cfg)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            lambda c: c["bags"]["genres"].update(max_len=0),
            "dataset.bags.genres: max_len must be >= 1, got 0",
        ),
        (lambda c: c["bags"]["genres"].update(maxlen=3), "dataset.bags.genres.maxlen is not a key"),
        (
            lambda c: c["sequences"]["history"].update(shares_vocab_with="nope"),
            "dataset.sequences.history: shares_vocab_with 'nope' is not a sparse column",
        ),
        (
            lambda c: c["bags"]["genres"].update(pooling="weighted_sum"),
            "dataset.bags.genres: pooling weighted_sum needs weighted: true",
        ),
        (
            lambda c: c.update(feature_groups={"g": ["user", "price"]}),
            "dataset.feature_groups.g: 'price' is not a sparse/bag/sequence column",
        ),
        (
            lambda c: c.update(hash_buckets={"genres": 8}),
            "dataset.hash_buckets.genres: 'genres' is not a sparse column",
        ),
    ],
)
def test_field_option_mistakes_are_one_line(tmp_path, edit, message):
    for i, s in enumerate(SPLITS):
        write_rich_csv(tmp_path / f"{s}.csv", n=30, seed=i)
    cfg = rich_config(tmp_path, {s: f"{s}.csv" for s in SPLITS})
    edit(cfg)
    with pytest.raises(MtlrecError) as e:
        prepare_dataset(cfg)
    assert str(e.value).startswith(message) and "\n" not in str(e.value)


def test_the_summary_names_truncation_and_hash_collisions(rich, capsys):
    from rich.console import Console

    from mtlrec.data.prepare import print_summary

    _, _, _, result = rich
    console = Console(record=True, width=250)
    print_summary(result, console=console)
    text = console.export_text()
    cut = sum(result.summary[s].truncated["genres"] for s in SPLITS)
    assert f"bag max_len 3: {cut:,} rows truncated" in text
    assert "sequence max_len 5" in text and "ids of item" in text
    assert "hashed into 64 buckets, all buckets taken" in text


def test_byo_funnel_with_counterfactual_labels_gives_cvr_auc_entire(tmp_path):
    from mtlrec.training.metrics import eval_targets

    rng = np.random.default_rng(0)
    for s in SPLITS:
        n = 200
        click = (rng.random(n) < 0.4).astype(int)
        would_buy = (rng.random(n) < 0.3).astype(int)
        pd.DataFrame(
            {
                "item": rng.integers(0, 9, size=n),
                "click": click,
                "buy": click * would_buy,
                "buy_if_clicked": would_buy,
            }
        ).to_csv(tmp_path / f"{s}.csv", index=False)
    cfg = {
        "name": "funnel_byo",
        "preparer": "csv",
        "path": str(tmp_path / "prepared"),
        "raw_dir": str(tmp_path),
        "files": {s: f"{s}.csv" for s in SPLITS},
        "sparse": ["item"],
        "targets": {"ctr": "click", "cvr": {"label": "buy", "where": "click"}},
        "funnel": {
            "click": "click",
            "conversion": "buy",
            "conversion_if_clicked": "buy_if_clicked",
        },
    }
    spec = prepare_dataset(cfg).spec
    assert spec.labels == ("click", "buy", "buy_if_clicked")
    assert spec.funnel.conversion_if_clicked == "buy_if_clicked"
    test = load_split(tmp_path / "prepared" / "test.parquet", spec, spec.tasks)
    assert test.labels[:, 2].sum() > test.labels[:, 1].sum()  # counterfactual: not only clicked
    targets = eval_targets(spec.tasks, {"ctr": "binary", "cvr": "binary"}, spec)
    assert "cvr_auc_entire" in [t.key("auc") for t in targets]


def test_byo_funnel_action_is_kept_as_a_binary_label_for_esm2(tmp_path):
    """`funnel.action` (ESM²'s cart/wish label) is loaded as a label and checked as binary on BYO
    data, with no task of its own: model=esm2 reads it from the funnel."""
    from mtlrec.errors import MtlrecError
    from mtlrec.models import build_model

    rng = np.random.default_rng(1)
    frames = {}
    for s in SPLITS:
        n = 200
        click = (rng.random(n) < 0.4).astype(int)
        cart = click * (rng.random(n) < 0.5).astype(int)
        frames[s] = pd.DataFrame(
            {
                "item": rng.integers(0, 9, size=n),
                "click": click,
                "cart": cart,
                "buy": cart * (rng.random(n) < 0.5).astype(int),
            }
        )
        frames[s].to_csv(tmp_path / f"{s}.csv", index=False)
    cfg = {
        "name": "action_byo",
        "preparer": "csv",
        "path": str(tmp_path / "prepared"),
        "raw_dir": str(tmp_path),
        "files": {s: f"{s}.csv" for s in SPLITS},
        "sparse": ["item"],
        "targets": {"ctr": "click", "cvr": {"label": "buy", "where": "click"}},
        "funnel": {"click": "click", "conversion": "buy", "action": "cart"},
    }
    spec = prepare_dataset(cfg).spec
    assert spec.labels == ("click", "buy", "cart") and spec.funnel.action == "cart"
    test = load_split(tmp_path / "prepared" / "test.parquet", spec, spec.tasks)
    assert test.labels[:, 2].tolist() == frames["test"]["cart"].tolist()
    model, tasks = build_model({"name": "esm2"}, spec, spec.tasks)
    assert [t.label for t in tasks] == ["click", "cart", "buy"]
    frames["val"].loc[0, "cart"] = 2
    frames["val"].to_csv(tmp_path / "val.csv", index=False)
    with pytest.raises(MtlrecError, match="cart"):
        prepare_dataset({**cfg, "path": str(tmp_path / "again")})


def test_parquet_list_columns_and_a_hashed_bag(tmp_path):
    import pyarrow as pa

    rows = {
        "item": ["a", "b", "a", "c"] * 10,
        "tags": [["x", "y"], [], None, ["y", "z", "x"]] * 10,
        "codes": [[3, 4], [4], [], [5, 3, 3]] * 10,
        "y": [0, 1, 0, 1] * 10,
    }
    for s in SPLITS:
        pq.write_table(pa.table(rows), tmp_path / f"{s}.parquet")
    cfg = {
        "name": "lists",
        "preparer": "csv",
        "path": str(tmp_path / "prepared"),
        "raw_dir": str(tmp_path),
        "files": {s: f"{s}.parquet" for s in SPLITS},
        "sparse": ["item"],
        "bags": {"tags": {"max_len": 2}, "codes": {"max_len": 3, "hash_buckets": 7}},
        "targets": {"y": "y"},
    }
    spec = prepare_dataset(cfg).spec
    test = load_split(tmp_path / "prepared" / "test.parquet", spec, spec.tasks)
    tags = vocab_of(tmp_path, "tags")
    off = spec.vocab_offsets
    a, b = spec.layout.sparse["tags"]
    assert test.sparse[3, a:b].tolist() == [tags["y"] + off["tags"], tags["z"] + off["tags"]]
    assert test.sparse[1, a:b].tolist() == [-1, -1] and test.sparse[2, a:b].tolist() == [-1, -1]
    a, b = spec.layout.sparse["codes"]
    want = [1 + reference_hash(v) % 7 + off["codes"] for v in ("5", "3", "3")]
    assert test.sparse[3, a:b].tolist() == want
    assert spec.feature("codes").vocab_size == 8 and spec.feature("codes").hash_buckets == 7
    assert spec.info["truncated_rows"]["tags"]["test"] == 10


def test_field_embedding_reads_a_prepared_batch(rich):
    from mtlrec.models.features import FieldEmbedding

    tmp, _, _, result = rich
    spec = result.spec
    test = load_split(tmp / "prepared" / "test.parquet", spec, spec.tasks)
    batch = test.slice(0, 16)
    torch.manual_seed(0)
    emb = FieldEmbedding(spec, 4, init_std=1.0)
    out = emb(batch.sparse, batch.dense)
    # groups first (user + history), then item, device, genres, tags, then price
    assert emb.out_dim == 4 * 5 + 1 and out.shape == (16, 21)
    w = emb.tables[0].weight.detach()
    ids, weights = batch.sparse[:, 6:10], batch.dense[:, 1:5]
    tags = (w[ids.clamp(min=0)] * (weights * (ids >= 0)).unsqueeze(-1)).sum(1)
    assert torch.allclose(out[:, 16:20], tags, atol=1e-6)
    assert torch.equal(out[:, 20], batch.dense[:, 0])
    out.sum().backward()
    assert emb.tables[0].weight.grad.abs().sum() > 0
