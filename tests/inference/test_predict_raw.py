"""`mtlrec predict RUN --input raw.csv` on real logs: a `|` bag, an `id:weight` bag, a sequence
pooled by target attention, a string label and a hashed field, prepared, trained and scored
through the real CLI; raw values give exactly the predictions of the prepared rows."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from helpers.cli import lines, mtlrec
from mtlrec.data.loader import load_split
from mtlrec.data.spec import DatasetSpec
from mtlrec.errors import MtlrecError
from mtlrec.inference import predict, score
from mtlrec.training.checkpoint import load_checkpoint, model_from_checkpoint

OUTPUTS = ["rating", "rich"]  # the model's outputs, one per task of the dataset
BATCH = 64  # not a divisor of the 300 test rows: the last batch is a short one


def _predict(run_dir: Path, src: Path, dst: Path, *extra: str):
    return mtlrec(
        "predict", str(run_dir), "--input", str(src), "--output", str(dst), *extra, cwd=dst.parent
    )


def _expected_oov(raw_csv: Path, prepared: Path) -> dict[str, int]:
    """Values of the raw test file missing from the train vocabulary, counted with pandas."""
    vocab = pq.read_table(prepared / "vocab.parquet").to_pandas()
    known = {f: set(g["value"]) for f, g in vocab.groupby("field")}
    df = pd.read_csv(raw_csv, dtype=str, keep_default_na=False)

    def values(column: str) -> list[str]:
        return [v.split(":")[0] for cell in df[column] for v in cell.split("|") if v]

    counts = {
        "user": int((~df["user"].isin(known["user"])).sum()),
        "item": int((~df["item"].isin(known["item"])).sum()),
        "genres": sum(v not in known["genres"] for v in values("genres")),
        "tags": sum(v not in known["tags"] for v in values("tags")),
        # a sequence keeps its newest max_len=5 values (the cell's last five), in the item vocab
        "history": sum(
            v not in known["item"] for cell in df["history"] for v in cell.split("|")[-5:] if v
        ),
    }
    return {k: v for k, v in counts.items() if v}


def _expected_cuts(raw_csv: Path) -> dict[str, int]:
    """Rows whose bag/sequence cell holds more values than the field's max_len."""
    df = pd.read_csv(raw_csv, dtype=str, keep_default_na=False)
    limits = {"genres": 3, "tags": 4, "history": 5}
    counts = {
        c: int(sum(len([v for v in x.split("|") if v]) > n for x in df[c]))
        for c, n in limits.items()
    }
    return {k: v for k, v in counts.items() if v}


def test_raw_csv_predicts_exactly_what_the_prepared_rows_predict(rich_run):
    tmp, run_dir, prepared = rich_run
    spec = DatasetSpec.load(prepared)
    assert {f.kind for f in spec.features} == {"sparse", "bag", "sequence", "dense"}
    assert spec.feature("history").pool == "target_attention" and spec.feature("tags").weighted
    raw_csv = tmp / "raw" / "test.csv"
    out_raw, out_prep = tmp / "from_raw.parquet", tmp / "from_prepared.parquet"
    done = _predict(run_dir, raw_csv, out_raw, "--batch-size", str(BATCH))
    assert done.returncode == 0, done.stderr
    oov = _expected_oov(raw_csv, prepared)
    assert oov["user"] >= 1 and oov["genres"] >= 1 and oov["history"] >= 1
    summary = ", ".join(f"{k} {v:,}" for k, v in oov.items())
    cuts = ", ".join(f"{k} {v:,}" for k, v in _expected_cuts(raw_csv).items())
    assert lines(done.stdout) == [
        f"{raw_csv}: 300 rows of raw values encoded with {prepared / 'encoders.json'}; "
        f"unseen values mapped to the OOV id: {summary}; rows cut to max_len: {cuts}",
        f"{out_raw}: 300 rows, columns {OUTPUTS}",
    ]
    done = _predict(run_dir, prepared / "test.parquet", out_prep, "--batch-size", str(BATCH))
    assert done.returncode == 0, done.stderr
    assert lines(done.stdout) == [f"{out_prep}: 300 rows, columns {OUTPUTS}"]
    got, want = pq.read_table(out_raw), pq.read_table(out_prep)
    assert got.column_names == OUTPUTS and got.num_rows == 300
    assert got.equals(want)  # exact: same rows, same order, same float32 bits

    # ... and both are the model's own scores of the loader's tensors, in the same batches.
    payload = load_checkpoint(run_dir / "checkpoints" / "best.pt")
    model, _, _ = model_from_checkpoint(payload)
    split = load_split(prepared / "test.parquet", spec)
    parts = [
        score(model, split.sparse[i : i + BATCH], split.dense[i : i + BATCH])
        for i in range(0, 300, BATCH)
    ]
    rich = np.concatenate([p["rich"] for p in parts])
    np.testing.assert_array_equal(got.column("rich").to_numpy(), rich)
    assert ((rich > 0) & (rich < 1)).all() and rich.std() > 1e-4  # probabilities, not constant


def test_raw_parquet_and_id_columns(rich_run):
    tmp, run_dir, prepared = rich_run
    frame = pd.read_csv(tmp / "raw" / "test.csv", dtype=str, keep_default_na=False)
    src = tmp / "raw_test.parquet"
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), src)  # text columns: raw
    dst = tmp / "from_raw_parquet.parquet"
    rows, outputs = predict(run_dir, src, dst, batch_size=BATCH, id_columns=["ts"])
    assert (rows, outputs) == (300, OUTPUTS)
    got = pq.read_table(dst)
    assert got.column("ts").to_pylist() == frame["ts"].tolist()
    ref = tmp / "ref.parquet"
    predict(run_dir, prepared / "test.parquet", ref, batch_size=BATCH)
    assert got.drop(["ts"]).equals(pq.read_table(ref))


def test_the_rule_telling_raw_values_from_prepared_rows(rich_run):
    from mtlrec.inference.inputs import holds_raw_values

    tmp, _, prepared = rich_run
    spec = DatasetSpec.load(prepared)
    assert not holds_raw_values(pq.read_schema(prepared / "test.parquet"), spec)
    raw = pa.Table.from_pandas(pd.read_csv(tmp / "raw" / "test.csv", dtype=str))
    assert holds_raw_values(raw.schema, spec)
    # One text column among prepared ones is enough; a bag of integers that is not a list too.
    schema = pq.read_schema(prepared / "test.parquet")
    user = schema.get_field_index("user")
    assert holds_raw_values(schema.set(user, pa.field("user", pa.string())), spec)
    genres = schema.get_field_index("genres")
    assert holds_raw_values(schema.set(genres, pa.field("genres", pa.int64())), spec)
    # Raw integers where prepared ids are integers too: prepared, unless --raw says otherwise.
    ints = pa.schema([pa.field(n, pa.int64()) for n in ("user", "item", "device")])
    assert not holds_raw_values(ints, spec)


def test_a_run_whose_dataset_dir_is_gone_is_one_line(rich_run):
    tmp, run_dir, prepared = rich_run
    away = tmp / "prepared.away"
    prepared.rename(away)
    try:
        dst = tmp / "gone.parquet"
        done = _predict(run_dir, tmp / "raw" / "test.csv", dst)
    finally:
        away.rename(prepared)
    assert done.returncode == 1 and done.stdout == ""
    assert lines(done.stderr) == [
        f"mtlrec predict: error: {prepared}: the dataset dir of run {run_dir} is gone, and raw "
        "input needs its encoders.json; prepare the dataset there again with the run's config, "
        "or score prepared parquet rows"
    ]
    assert not dst.exists() and not list(tmp.glob(".gone.parquet*"))


def test_raw_input_errors_are_one_line_and_write_nothing(rich_run, tmp_path):
    tmp, run_dir, prepared = rich_run
    frame = pd.read_csv(tmp / "raw" / "test.csv", dtype=str, keep_default_na=False)
    bad = tmp_path / "bad.csv"
    frame.drop(columns=["genres"]).to_csv(bad, index=False)
    dst = tmp_path / "out.parquet"
    done = _predict(run_dir, bad, dst)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    cols = [c for c in frame.columns if c != "genres"]
    assert lines(done.stderr) == [
        f"mtlrec predict: error: {bad}: column(s) ['genres'] not found; the file has "
        f"{len(cols)} columns: {cols}"
    ]
    frame.to_csv(tmp_path / "ok.csv", index=False)
    with pytest.raises(MtlrecError) as info:
        predict(run_dir, tmp_path / "ok.csv", dst, id_columns=["request_id"])
    assert str(info.value) == (
        f"{tmp_path / 'ok.csv'}: has no column(s) ['request_id'] asked for by --id-columns"
    )
    # The dataset prepared again with other features: its encoders no longer fit the model.
    copy = tmp_path / "copy"
    shutil.copytree(prepared, copy)
    spec = DatasetSpec.load(copy)
    feats = list(spec.features)
    feats[0] = type(feats[0])(**{**feats[0].__dict__, "vocab_size": feats[0].vocab_size + 1})
    DatasetSpec(**{**spec.__dict__, "features": tuple(feats)}).save(copy)
    (copy / "checksums.json").unlink()  # a hand edit: the manifest would report it first
    from mtlrec.inference.raw import load_encoder

    payload = {"config": {"dataset": {"path": str(copy)}}}
    with pytest.raises(MtlrecError) as info:
        load_encoder(payload, run_dir, DatasetSpec.load(prepared))
    assert str(info.value) == (
        f"{copy / 'spec.json'}: the dataset now has other features than run {run_dir} was "
        "trained on (first difference: ('user', 'user')); raw rows cannot be encoded as in "
        "training: prepare it again with the run's config, or score prepared rows"
    )
    # A dataset whose preparer derives its columns in code (census, ali-ccp's raw release).
    doc = json.loads((copy / "encoders.json").read_text())
    (copy / "encoders.json").write_text(
        json.dumps({**doc, "replayable": False, "preparer": "census"})
    )
    with pytest.raises(MtlrecError) as info:
        load_encoder(payload, run_dir, DatasetSpec.load(prepared))
    assert str(info.value) == (
        f"{copy}: dataset 'rich' (preparer census) derives its columns in code, so raw rows "
        "cannot be encoded with its encoders; score its prepared parquet rows instead"
    )
    (copy / "encoders.json").write_text("{not json")
    with pytest.raises(MtlrecError, match=r"encoders.json: malformed encoders \(JSONDecodeError"):
        load_encoder(payload, run_dir, DatasetSpec.load(prepared))
    (copy / "encoders.json").write_text(json.dumps(doc))
    (copy / "vocab.parquet").write_bytes(b"PAR1 torn")
    with pytest.raises(MtlrecError) as info:
        load_encoder(payload, run_dir, DatasetSpec.load(prepared))
    assert str(info.value).startswith(f"{copy / 'vocab.parquet'}: cannot read the vocabularies (")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.csv", "copy", "ok.csv"]
