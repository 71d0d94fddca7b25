"""Prepared datasets carry checksums (checksums.json: size + SHA-256 per file), verified on load,
through the real CLI: a flipped byte in a split or in spec.json is one line naming the file (also
streaming, and for a generated dataset that is reused); a dataset without checksums loads with a
warning; damaged parquet pages (a prepared split without checksums, a raw parquet input) and a
CSV row longer than a read block are one line, and nothing is half-written."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from helpers.cli import env, lines, mtlrec
from helpers.datagen import write_events
from mtlrec.data.prepare.manifest import MANIFEST_FILE

pytestmark = pytest.mark.slow  # ~70 s of real `mtlrec` processes; test_manifest.py is the fast set

TINY_YAML = """\
name: tiny
preparer: csv
path: {out}
raw_dir: {raw}
files: {{train: train.{ext}, val: val.{ext}, test: test.{ext}}}
sparse: [user, item, city]
dense: [price, age]
targets: {{ctr: {{label: click}}, cvr: {{label: buy, where: click}}}}
funnel: {{click: click, conversion: buy}}
"""
TRAIN = ["trainer.epochs=1", "trainer.batch_size=256", "trainer.num_threads=1", "device=cpu"]
REPREPARE = "prepare the dataset again with overwrite=true"


def write_conf(root: Path, raw: Path, out: Path, ext: str = "csv") -> Path:
    conf = root / "conf"
    (conf / "dataset").mkdir(parents=True, exist_ok=True)
    (conf / "dataset" / "tiny.yaml").write_text(TINY_YAML.format(out=out, raw=raw, ext=ext))
    return conf


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    """A BYO CSV dataset prepared once by `mtlrec prepare`; tests work on copies of it."""
    root = tmp_path_factory.mktemp("prepared")
    raw, _ = write_events(root)
    conf = write_conf(root, raw, root / "data" / "tiny")
    out = mtlrec("prepare", "--config-dir", str(conf), "dataset=tiny", cwd=root)
    assert out.returncode == 0, out.stderr
    return root / "data" / "tiny"


@pytest.fixture
def dataset(prepared, tmp_path) -> Path:
    """A copy of the prepared dataset, with a conf dir pointing at it."""
    copy = tmp_path / "data" / "tiny"
    shutil.copytree(prepared, copy)
    write_conf(tmp_path, tmp_path / "raw", copy)
    return copy


def train(tmp_path: Path, *extra: str, run: str = "run"):
    conf = tmp_path / "conf"
    return mtlrec(
        "train", "--config-dir", str(conf), "dataset=tiny", *TRAIN, *extra,
        f"hydra.run.dir={tmp_path / run}", cwd=tmp_path,
    )  # fmt: skip


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def flip(path: Path, at: int | None = None, count: int = 1) -> None:
    data = bytearray(path.read_bytes())
    at = len(data) // 2 if at is None else at
    for i in range(at, at + count):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def mismatch_line(path: Path, recorded: str, remedy: str = REPREPARE) -> str:
    return (
        f"{path}: checksum mismatch (sha256 {sha(path)[:12]}..., {MANIFEST_FILE} recorded "
        f"{recorded[:12]}...): the file is damaged or was changed after the dataset was "
        f"published; {remedy}"
    )


def recorded(directory: Path) -> dict:
    return json.loads((directory / MANIFEST_FILE).read_text())["files"]


def test_prepare_records_the_size_and_sha256_of_every_file(prepared):
    body = json.loads((prepared / MANIFEST_FILE).read_text())
    assert (body["version"], body["algorithm"], body["origin"]) == (1, "sha256", "prepared")
    names = sorted(p.name for p in prepared.iterdir() if p.name != MANIFEST_FILE)
    assert names == [
        "encoders.json", "spec.json", "test.parquet", "train.parquet", "val.parquet",
        "vocab.parquet",
    ]  # fmt: skip
    assert body["files"] == {
        n: {"bytes": (prepared / n).stat().st_size, "sha256": sha(prepared / n)} for n in names
    }


@pytest.mark.parametrize("name", ["train.parquet", "spec.json"])
def test_a_flipped_byte_is_one_line_naming_the_file(dataset, tmp_path, name):
    want = recorded(dataset)[name]["sha256"]
    flip(dataset / name)
    damaged = (dataset / name).read_bytes()
    out = train(tmp_path)
    assert out.returncode == 1
    # spec.json (and the manifest) are verified when the settings check loads the spec, before
    # any run dir exists; a damaged split is found when the run loads it
    before_run = "mtlrec train: error: " if name == "spec.json" else ""
    assert lines(out.stderr) == [before_run + mismatch_line(dataset / name, want)]
    assert "Traceback" not in out.stdout + out.stderr
    if before_run:
        assert not (tmp_path / "run").exists()
    assert (dataset / name).read_bytes() == damaged  # the dataset is left as it is
    assert not (tmp_path / "run" / "checkpoints").exists() or not any(
        (tmp_path / "run" / "checkpoints").iterdir()
    )


def test_a_damaged_split_is_found_when_streaming_too(dataset, tmp_path):
    want = recorded(dataset)["train.parquet"]["sha256"]
    flip(dataset / "train.parquet", count=64)
    out = train(tmp_path, "streaming=enabled")
    assert out.returncode == 1
    assert lines(out.stderr) == [mismatch_line(dataset / "train.parquet", want)]


def test_evaluate_on_damaged_data_is_one_line(dataset, tmp_path):
    assert train(tmp_path).returncode == 0
    want = recorded(dataset)["test.parquet"]["sha256"]
    flip(dataset / "test.parquet")
    out = mtlrec("evaluate", str(tmp_path / "run"), "--data", str(dataset), cwd=tmp_path)
    assert out.returncode == 1
    assert lines(out.stderr) == [
        f"mtlrec evaluate: error: {mismatch_line(dataset / 'test.parquet', want)}"
    ]


def test_a_truncated_split_names_both_sizes(dataset, tmp_path):
    path = dataset / "val.parquet"
    size = path.stat().st_size
    path.write_bytes(path.read_bytes()[:-10])
    out = train(tmp_path)
    assert out.returncode == 1
    assert lines(out.stderr) == [
        f"{path}: {size - 10} bytes, but {MANIFEST_FILE} recorded {size} when the dataset was "
        f"published (truncated or changed since); {REPREPARE}"
    ]


def test_a_damaged_manifest_is_one_line(dataset, tmp_path):
    (dataset / MANIFEST_FILE).write_text('{"version": 1, "algorithm": "sha256", "files": [')
    out = train(tmp_path)
    assert out.returncode == 1
    [line] = lines(out.stderr)
    assert line.startswith(  # found by the settings check: nothing written
        f"mtlrec train: error: {dataset / MANIFEST_FILE}: not a valid checksum manifest ("
    )
    assert not (tmp_path / "run").exists()
    assert line.endswith(f"); {REPREPARE}")


def test_a_dataset_prepared_before_checksums_loads_with_a_warning(dataset, tmp_path):
    (dataset / MANIFEST_FILE).unlink()
    out = train(tmp_path)
    assert out.returncode == 0, out.stderr
    warning = (
        f"{dataset}: no {MANIFEST_FILE} (published before datasets carried checksums), so its "
        "files are not verified; prepare it again with overwrite=true to add them"
    )
    assert (out.stdout + out.stderr).count(warning) == 1
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["status"] == "completed"


def damage_page(path: Path, column: str) -> None:
    """16 bytes flipped in the middle of `column`'s first data page (the footer stays intact)."""
    meta = pq.ParquetFile(path).metadata
    names = [meta.row_group(0).column(j).path_in_schema for j in range(meta.num_columns)]
    chunk = meta.row_group(0).column(names.index(column))
    flip(path, chunk.data_page_offset + chunk.total_compressed_size // 2, count=16)


def test_a_damaged_page_of_a_split_without_checksums_is_one_line(dataset, tmp_path):
    (dataset / MANIFEST_FILE).unlink()
    damage_page(dataset / "train.parquet", "user")
    out = train(tmp_path)
    assert out.returncode == 1
    [line] = [ln for ln in lines(out.stderr) if "checksums" not in ln]
    assert line.startswith(f"{dataset / 'train.parquet'}: not a readable parquet file (")
    assert "Traceback" not in out.stdout + out.stderr


def test_a_damaged_page_of_a_raw_parquet_input_is_one_line(tmp_path):
    import pandas as pd

    raw_csv, _ = write_events(tmp_path)
    raw = tmp_path / "rawpq"
    raw.mkdir()
    for split in ("train", "val", "test"):
        pd.read_csv(raw_csv / f"{split}.csv").to_parquet(raw / f"{split}.parquet")
    damage_page(raw / "train.parquet", "user")
    conf = write_conf(tmp_path, raw, tmp_path / "data" / "tiny", ext="parquet")
    out = mtlrec("prepare", "--config-dir", str(conf), "dataset=tiny", cwd=tmp_path)
    assert out.returncode == 1
    [line] = lines(out.stderr)
    assert line.startswith(
        f"mtlrec prepare: error: {raw / 'train.parquet'}: not a readable parquet file from row 1 on ("
    )
    assert line.endswith("); the file is damaged: write it again")
    assert os.listdir(tmp_path / "data") == []  # no dataset, no staging dir


def test_a_raw_parquet_with_page_checksums_is_checked_page_by_page(tmp_path):
    """Damage that still decodes (a flipped value) is caught where the writer stored page CRCs."""
    import pandas as pd
    import pyarrow as pa

    raw_csv, _ = write_events(tmp_path)
    raw = tmp_path / "rawpq"
    raw.mkdir()
    for split in ("train", "val", "test"):
        table = pa.Table.from_pandas(pd.read_csv(raw_csv / f"{split}.csv"))
        pq.write_table(table, raw / f"{split}.parquet", write_page_checksum=True)
    damage_page(raw / "train.parquet", "click")  # decodes to other labels without the CRC
    conf = write_conf(tmp_path, raw, tmp_path / "data" / "tiny", ext="parquet")
    out = mtlrec("prepare", "--config-dir", str(conf), "dataset=tiny", cwd=tmp_path)
    assert out.returncode == 1
    [line] = lines(out.stderr)
    assert "not a readable parquet file from row 1 on (" in line and "CRC" in line
    assert os.listdir(tmp_path / "data") == []


def test_a_10_mb_cell_names_its_line_and_the_key_to_raise(tmp_path):
    raw, _ = write_events(tmp_path)
    rows = (raw / "train.csv").read_text().splitlines()
    cells = rows[5].split(",")
    cells[1] = "u" + "x" * (10 << 20)  # the user id of data row 5 (line 6 of the file)
    rows[5] = ",".join(cells)
    (raw / "train.csv").write_text("\n".join(rows) + "\n")
    conf = write_conf(tmp_path, raw, tmp_path / "data" / "tiny")
    out = mtlrec("prepare", "--config-dir", str(conf), "dataset=tiny", cwd=tmp_path)
    assert out.returncode == 1
    assert lines(out.stderr) == [
        f"mtlrec prepare: error: {raw / 'train.csv'}: line 6 is 10.0 MB long, more than one "
        "read block (dataset.block_size_mb=1); raise it, e.g. +dataset.block_size_mb=32"
    ]
    assert os.listdir(tmp_path / "data") == []
    again = mtlrec(
        "prepare", "--config-dir", str(conf), "dataset=tiny", "+dataset.block_size_mb=32",
        cwd=tmp_path,
    )  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert (tmp_path / "data" / "tiny" / MANIFEST_FILE).is_file()


def test_a_reused_generated_dataset_is_verified(tmp_path):
    data_dir = tmp_path / "cache"
    run_env = env(MTLREC_DATA_DIR=str(data_dir))
    base = ["dataset.num_rows=2000", *TRAIN]
    first = mtlrec("train", *base, f"hydra.run.dir={tmp_path / 'a'}", cwd=tmp_path, env=run_env)
    assert first.returncode == 0, first.stderr
    [generated] = [p.parent for p in data_dir.rglob(MANIFEST_FILE)]
    assert json.loads((generated / MANIFEST_FILE).read_text())["origin"] == "generated"
    want = recorded(generated)["spec.json"]["sha256"]
    flip(generated / "spec.json", at=10)
    out = mtlrec("train", *base, f"hydra.run.dir={tmp_path / 'b'}", cwd=tmp_path, env=run_env)
    assert out.returncode == 1
    remedy = f"remove {generated} and it is generated again on the next run"
    assert lines(out.stderr) == [
        "mtlrec train: error: " + mismatch_line(generated / "spec.json", want, remedy)
    ]
    assert not (tmp_path / "b").exists()  # found before the run dir
