"""`--raw` for raw integer categorical values (which look like prepared ids), and predict's
fixed batches whatever the input's blocks."""

from __future__ import annotations

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from helpers.cli import lines, mtlrec
from helpers.datagen import byo_config, train, write_events
from mtlrec.data.sources import prepare_dataset
from mtlrec.inference import predict
from mtlrec.inference.inputs import Chunk
from mtlrec.inference.predict import fixed_batches


def test_raw_integer_values_need_the_raw_flag(tmp_path):
    raw, _ = write_events(tmp_path)
    cfg = byo_config(raw, tmp_path / "prepared", sparse=["item"], min_count=1)
    spec = prepare_dataset(cfg).spec
    assert [f.name for f in spec.sparse] == ["item"] and spec.feature("item").vocab_size == 16
    run_dir = tmp_path / "run"
    overrides = ["dataset=prepared", f"dataset.path={tmp_path / 'prepared'}", "model=esmm"]
    assert train(run_dir, [*overrides, "trainer.epochs=1"])["status"] == "completed"
    # item holds raw values 0..14 (ids are by frequency: another number); price has gaps.
    frame = pd.read_csv(raw / "test.csv")
    assert frame["item"].dtype.kind == "i" and frame["price"].isna().any()
    src = tmp_path / "raw_ints.parquet"
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), src)
    ref = tmp_path / "ref.parquet"
    predict(run_dir, tmp_path / "prepared" / "test.parquet", ref, batch_size=50)
    done = mtlrec(
        "predict", str(run_dir), "--input", str(src), "--output", str(tmp_path / "raw.parquet"),
        "--raw", "--batch-size", "50", cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert lines(done.stdout)[0].startswith(f"{src}: 200 rows of raw values encoded with ")
    assert pq.read_table(tmp_path / "raw.parquet").equals(pq.read_table(ref))
    # Without --raw the integers are taken for prepared ids: other (wrong) scores, as documented.
    filled = tmp_path / "raw_filled.parquet"  # (a prepared dense column has no gaps)
    pq.write_table(pa.Table.from_pandas(frame.fillna({"price": 1.0}), preserve_index=False), filled)
    predict(run_dir, filled, tmp_path / "as_ids.parquet", batch_size=50)
    as_ids = pq.read_table(tmp_path / "as_ids.parquet")
    assert as_ids.num_rows == 200 and not as_ids.equals(pq.read_table(ref))


def test_fixed_batches_regroup_uneven_chunks_into_exact_sizes():
    def chunk(start: int, n: int) -> Chunk:
        rows = torch.arange(start, start + n)
        ids = pa.table({"row": pa.array(rows.numpy())})
        return Chunk(rows.unsqueeze(1), rows.float().unsqueeze(1), ids)

    sizes = [7, 1, 30, 2, 0, 15]  # 55 rows
    chunks, at = [], 0
    for n in sizes:
        chunks.append(chunk(at, n))
        at += n
    batches = list(fixed_batches(iter(chunks), 16))
    assert [len(b) for b in batches] == [16, 16, 16, 7]
    assert torch.equal(torch.cat([b.sparse[:, 0] for b in batches]), torch.arange(55))
    assert torch.equal(torch.cat([b.dense[:, 0] for b in batches]), torch.arange(55.0))
    assert sum((b.ids.column("row").to_pylist() for b in batches), []) == list(range(55))
    assert list(fixed_batches(iter([]), 16)) == []
