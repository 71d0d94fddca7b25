"""checksums.json in-process (fast): what staged_dir records, what each loader checks, files put
into a dataset dir after publishing (tests/data/test_checksums.py runs the cases through the CLI)."""

from __future__ import annotations

import pytest

from helpers.datagen import byo_config, write_events
from mtlrec.data.prepare import staged_dir
from mtlrec.data.sources import prepare_dataset
from mtlrec.data.spec import DatasetSpec
from mtlrec.data.streaming import StreamingSplit
from mtlrec.errors import MtlrecError


def _published(tmp_path):
    raw, _ = write_events(tmp_path)
    out = tmp_path / "data" / "ev"
    prepare_dataset(byo_config(raw, out))
    return out


def test_staged_dir_lists_every_file_with_its_sha256(tmp_path):
    import hashlib
    import json

    from mtlrec.data.prepare.manifest import MANIFEST_FILE

    path = tmp_path / "d"
    with staged_dir(path, overwrite=False) as tmp:
        (tmp / "spec.json").write_text("{}")
        (tmp / "sub").mkdir()
        (tmp / "sub" / "a.bin").write_bytes(b"\x00\x01")
    body = json.loads((path / MANIFEST_FILE).read_text())
    assert body["files"] == {
        "spec.json": {"bytes": 2, "sha256": hashlib.sha256(b"{}").hexdigest()},
        "sub/a.bin": {"bytes": 2, "sha256": hashlib.sha256(b"\x00\x01").hexdigest()},
    }


def test_the_loaders_check_each_split_and_the_spec(tmp_path):
    from mtlrec.data.loader import load_split

    out = _published(tmp_path)
    spec = DatasetSpec.load(out)
    split = load_split(out / "val.parquet", spec, spec.tasks)
    assert len(split) == 200
    data = bytearray((out / "val.parquet").read_bytes())
    data[len(data) // 2] ^= 1  # one bit
    (out / "val.parquet").write_bytes(bytes(data))
    for read in (
        lambda: load_split(out / "val.parquet", spec, spec.tasks),
        lambda: StreamingSplit(out / "val.parquet", spec, spec.tasks),
    ):
        with pytest.raises(MtlrecError, match=r"val\.parquet: checksum mismatch \(sha256 ") as e:
            read()
        assert str(e.value).endswith("prepare the dataset again with overwrite=true")
    load_split(out / "train.parquet", spec, spec.tasks)  # the others are fine
    (out / "encoders.json").write_text((out / "encoders.json").read_text() + " ")
    with pytest.raises(MtlrecError, match=r"encoders\.json: \d+ bytes, but checksums\.json"):
        DatasetSpec.load(out)


def test_a_file_added_after_publishing_loads_with_a_warning(tmp_path, caplog):
    from mtlrec.data.loader import load_split

    out = _published(tmp_path)
    spec = DatasetSpec.load(out)
    (out / "extra.parquet").write_bytes((out / "val.parquet").read_bytes())
    with caplog.at_level("WARNING"):
        assert len(load_split(out / "extra.parquet", spec, spec.tasks)) == 200
    assert [r.getMessage() for r in caplog.records] == [
        f"{out / 'extra.parquet'}: not listed in checksums.json (added after the dataset was "
        "published), so it is not verified"
    ]
