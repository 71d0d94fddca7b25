"""Publishing prepared datasets: never replaced without overwrite=true (also when two prepares
race, through the real CLI), never swapped under a running reader, stale staging dirs cleaned."""

from __future__ import annotations

import os
import subprocess
import sys

import pandas as pd
import pytest
import torch

from helpers.datagen import REPO, byo_config, write_events
from mtlrec.data.prepare import clean_stale, staged_dir
from mtlrec.data.sources import prepare_dataset
from mtlrec.data.spec import DatasetSpec
from mtlrec.data.streaming import StreamingSplit
from mtlrec.errors import MtlrecError

TINY_YAML = """\
name: tiny
preparer: csv
path: {out}
raw_dir: {raw}
files: {{train: train.csv, val: val.csv, test: test.csv}}
sparse: [user, item, city]
dense: [price, age]
targets: {{ctr: {{label: click}}, cvr: {{label: buy, where: click}}}}
funnel: {{click: click, conversion: buy}}
"""


def test_two_prepares_started_together_one_wins_the_other_says_so(tmp_path):
    raw, _ = write_events(tmp_path)
    out = tmp_path / "data" / "tiny"
    conf = tmp_path / "conf" / "dataset"
    conf.mkdir(parents=True)
    (conf / "tiny.yaml").write_text(TINY_YAML.format(out=out, raw=raw))
    env = {**os.environ, "PYTHONPATH": str(REPO), "HYDRA_FULL_ERROR": "0"}
    cmd = [
        sys.executable,
        "-m",
        "mtlrec",
        "prepare",
        "--config-dir",
        str(tmp_path / "conf"),
        "dataset=tiny",
    ]
    procs = [
        subprocess.Popen(
            cmd,
            cwd=tmp_path,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    results = [(p.wait(timeout=300), *p.communicate()) for p in procs]
    codes = sorted(rc for rc, _, _ in results)
    assert codes == [0, 1], results
    loser = next(err for rc, _, err in results if rc == 1).strip().splitlines()
    assert len(loser) == 1, loser
    # Which line depends on how far the winner got when the loser looked (both are exit 1).
    assert loser[0] in {
        f"mtlrec prepare: error: {out}: a prepared dataset already exists there; pass overwrite=true to prepare it again",
        f"mtlrec prepare: error: {out}: another prepare published a dataset there first; pass overwrite=true to prepare it again",
    }, loser
    assert DatasetSpec.load(out).name == "tiny"
    assert sorted(p.name for p in out.parent.iterdir()) == ["tiny"]  # no staging dir left


def test_a_lost_race_at_the_rename_leaves_the_winner_untouched(tmp_path):
    target = tmp_path / "ds"
    with pytest.raises(MtlrecError) as e, staged_dir(target, overwrite=False) as tmp:
        (tmp / "mine").write_text("loser")
        target.mkdir()  # another prepare published in the meantime
        (target / "theirs").write_text("winner")
    assert str(e.value) == (
        f"{target}: another prepare published a dataset there first; pass overwrite=true to prepare it again"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]
    assert [p.name for p in target.iterdir()] == ["theirs"]


def test_staging_dirs_of_dead_processes_are_removed_by_the_next_prepare(tmp_path):
    raw, _ = write_events(tmp_path)
    out = tmp_path / "data" / "events"
    out.parent.mkdir()
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    ).stdout.strip()
    stale = out.parent / f".events.tmp-{dead}-0123abcd"
    stale.mkdir()
    (stale / "train.parquet").write_bytes(b"x" * 1000)
    old = out.parent / f".events.old-{dead}-89abcdef"
    old.mkdir()
    alive = out.parent / f".events.tmp-{os.getppid()}-feedbeef"  # a live process: kept
    alive.mkdir()
    prepare_dataset(byo_config(raw, out))
    assert sorted(p.name for p in out.parent.iterdir()) == sorted(["events", alive.name])
    assert clean_stale(out) == []


def test_overwrite_is_refused_while_a_job_streams_from_the_dataset(tmp_path):
    raw, _ = write_events(tmp_path)
    out = tmp_path / "data" / "events"
    prepare_dataset(byo_config(raw, out))
    spec = DatasetSpec.load(out)
    stream = StreamingSplit(
        out / "train.parquet", spec, spec.tasks, shuffle_buffer=64, read_rows=32
    )
    first = sum(len(b) for b in stream.batches(50, torch.Generator().manual_seed(0)))
    with pytest.raises(MtlrecError) as e:
        prepare_dataset(byo_config(raw, out, min_count=1), overwrite=True)
    assert str(e.value) == (
        f"{out}: a running job is reading this dataset; prepare again when it has finished, or write to another dataset.path"
    )
    # The job reads on, from the files it started with.
    assert sum(len(b) for b in stream.batches(50, torch.Generator().manual_seed(1))) == first
    assert DatasetSpec.load(out) == spec
    stream.close()
    prepare_dataset(byo_config(raw, out, min_count=1), overwrite=True)
    assert DatasetSpec.load(out).info["min_count"] == 1
    assert sorted(p.name for p in out.parent.iterdir()) == ["events"]


def test_a_csv_with_a_byte_order_mark_is_accepted(tmp_path):
    raw, df = write_events(tmp_path)
    ref = prepare_dataset(byo_config(raw, tmp_path / "ref"))
    for split in ("train", "val", "test"):
        text = (raw / f"{split}.csv").read_text()
        (raw / f"{split}.csv").write_text("\ufeff" + text, encoding="utf-8")
    bom = prepare_dataset(byo_config(raw, tmp_path / "bom"))
    assert bom.vocab_sizes == ref.vocab_sizes
    for split in ("train", "val", "test"):
        pd.testing.assert_frame_equal(
            pd.read_parquet(tmp_path / "bom" / f"{split}.parquet"),
            pd.read_parquet(tmp_path / "ref" / f"{split}.parquet"),
        )


def test_a_duplicated_column_name_is_an_error_naming_it(tmp_path):
    raw, _ = write_events(tmp_path)
    lines = (raw / "train.csv").read_text().splitlines()
    lines[0] = lines[0].replace("city", "item")
    (raw / "train.csv").write_text("\n".join(lines) + "\n")
    cfg = byo_config(raw, tmp_path / "out", sparse=["user", "item"])
    with pytest.raises(MtlrecError) as e:
        prepare_dataset(cfg)
    assert str(e.value) == (
        f"{raw / 'train.csv'}: column 'item' appears twice (columns 3 and 4); rename one of them"
    )


def test_a_dataset_yaml_that_does_not_parse_is_one_line(tmp_path):
    from mtlrec.data.prepare import compose_prepare

    conf = tmp_path / "conf" / "dataset"
    conf.mkdir(parents=True)
    (conf / "bad.yaml").write_text("name: bad\nfiles: {train: a.csv val: b.csv}\npath: x\n")
    with pytest.raises(MtlrecError) as e:
        compose_prepare(["dataset=bad"], str(tmp_path / "conf"))
    msg = str(e.value)
    assert msg.startswith("config: not valid YAML: while parsing a flow mapping")
    assert f"{conf / 'bad.yaml'}" in msg and "\n" not in msg


def test_a_copied_reader_shares_the_hold_until_the_last_copy_goes(tmp_path):
    """The distributed reader copies a StreamingSplit's attributes: the hold must survive
    the original and be released exactly once."""
    import copy
    import gc

    raw, _ = write_events(tmp_path)
    out = tmp_path / "data" / "events"
    prepare_dataset(byo_config(raw, out))
    spec = DatasetSpec.load(out)
    stream = StreamingSplit(out / "train.parquet", spec, spec.tasks)
    twin = copy.copy(stream)
    del stream
    gc.collect()
    with pytest.raises(MtlrecError, match="a running job is reading this dataset"):
        prepare_dataset(byo_config(raw, out), overwrite=True)
    del twin
    gc.collect()
    prepare_dataset(byo_config(raw, out), overwrite=True)


def test_an_old_dataset_a_dead_prepare_moved_aside_is_moved_back(tmp_path):
    raw, _ = write_events(tmp_path)
    out = tmp_path / "data" / "events"
    prepare_dataset(byo_config(raw, out))
    before = sorted((p.name, p.read_bytes()) for p in out.iterdir())
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    ).stdout.strip()
    out.rename(out.parent / f".events.old-{dead}-89abcdef")  # killed between the two renames
    with pytest.raises(MtlrecError, match="a prepared dataset already exists there"):
        prepare_dataset(byo_config(raw, out))
    assert sorted((p.name, p.read_bytes()) for p in out.iterdir()) == before
    assert sorted(p.name for p in out.parent.iterdir()) == ["events"]
