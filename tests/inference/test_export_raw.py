"""`mtlrec export` with bag, weighted-bag, sequence (target attention) and hashed fields: the
exported model takes the full input layout, the encoders travel with it, every file carries a
SHA-256 checked on load, and raw rows -> encoders -> exported model equals raw rows -> predict."""

from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from helpers.cli import lines, mtlrec
from mtlrec.data.spec import DatasetSpec
from mtlrec.errors import MtlrecError
from mtlrec.inference import (
    EXPORT_TOLERANCE,
    exported_inputs,
    field_ids,
    load_export,
    predict,
    sample_inputs,
)

pytestmark = pytest.mark.filterwarnings(
    "ignore:`torch.jit"
)  # deprecated in torch 2.13, still asked for

FILES = ["encoders.json", "model.pt", "spec.json", "vocab.parquet"]


@pytest.fixture(scope="module")
def exported(rich_run):
    """(tmp, run dir, prepared dir, export dir, predictions of the raw test CSV)."""
    tmp, run_dir, prepared = rich_run
    out_dir = tmp / "export_ts"
    done = mtlrec(
        "export", str(run_dir), "--format", "torchscript", "--output", str(out_dir), cwd=tmp
    )
    assert done.returncode == 0, done.stderr
    assert lines(done.stdout)[1] == f"{out_dir / 'export.json'}: SHA-256 of {', '.join(FILES)}"
    want = tmp / "export_ref.parquet"
    predict(run_dir, tmp / "raw" / "test.csv", want, batch_size=300)
    return tmp, run_dir, prepared, out_dir, pq.read_table(want)


def test_the_export_holds_the_encoders_and_the_checksum_of_every_file(exported):
    tmp, _, prepared, out_dir, _ = exported
    info = json.loads((out_dir / "export.json").read_text())
    assert sorted(info["files"]) == FILES
    for name, digest in info["files"].items():
        assert hashlib.sha256((out_dir / name).read_bytes()).hexdigest() == digest
    for name in ("encoders.json", "vocab.parquet"):
        assert (out_dir / name).read_bytes() == (prepared / name).read_bytes()
    spec = DatasetSpec.load(prepared)
    sparse = info["inputs"]["sparse_ids"]
    assert sparse["shape"] == ["batch", 15] and sparse["pad_id"] == -1
    assert sparse["columns"][:4] == ["user", "item", "device", "genres[0]"]
    assert sparse["columns"][10:] == [f"history[{i}]" for i in range(5)]
    history = next(f for f in sparse["fields"] if f["name"] == "history")
    assert history == {
        "name": "history",
        "kind": "sequence",
        "columns": [10, 15],
        "vocab_size": spec.feature("item").vocab_size,
        "oov_id": 0,
        "pooling": "target_attention",
        "shares_vocab_with": "item",
    }
    device = next(f for f in sparse["fields"] if f["name"] == "device")
    assert device["hash_buckets"] == 64 and device["columns"] == [2, 3]
    assert info["inputs"]["dense"]["columns"] == ["price"] + [
        f"tags__weights[{i}]" for i in range(4)
    ]


def test_raw_rows_through_the_export_equal_raw_rows_through_predict(exported):
    tmp, _, _, out_dir, want = exported
    sparse_ids, dense = exported_inputs(tmp / "raw" / "test.csv", out_dir)
    assert sparse_ids.shape == (300, 15) and dense.shape == (300, 5)
    assert sparse_ids.min() >= -1 and (sparse_ids[:, 3:] == -1).any()  # per-field ids, padded
    loaded = torch.jit.load(str(out_dir / "model.pt"))  # the bare file, as a user loads it
    names = json.loads((out_dir / "export.json").read_text())["outputs"]["columns"]
    assert names == want.column_names
    with torch.no_grad():
        outputs = loaded(sparse_ids, dense)  # task name -> scores
    assert list(outputs) == names
    got = np.stack([outputs[n].numpy() for n in names], 1)
    expected = np.stack([want.column(n).to_numpy() for n in names], 1)
    assert np.abs(got - expected).max() <= EXPORT_TOLERANCE
    score, _ = load_export(out_dir)  # the checked loader gives the same
    np.testing.assert_array_equal(score(sparse_ids.numpy(), dense.numpy()), got)


def test_the_exported_model_maps_out_of_range_ids_to_oov_and_keeps_padding(exported):
    tmp, _, _, out_dir, _ = exported
    score, _ = load_export(out_dir)
    sparse_ids, dense = exported_inputs(tmp / "raw" / "test.csv", out_dir)
    rows = sparse_ids[:40].clone()
    rows[:, 0] = 0  # user: the OOV id
    rows[:, 3] = 0  # genres[0]: the OOV id (not padding)
    beyond = rows.clone()
    beyond[:, 0] = 10**6
    beyond[:, 3] = 51  # genres has 7 ids
    want = score(rows.numpy(), dense[:40].numpy())
    np.testing.assert_array_equal(score(beyond.numpy(), dense[:40].numpy()), want)
    padded = rows.clone()
    padded[:, 3] = -1  # padding is no value at all: another result than the OOV value
    assert not np.array_equal(score(padded.numpy(), dense[:40].numpy()), want)


def test_field_ids_undo_the_fused_offsets_only(rich_run):
    _, _, prepared = rich_run
    spec = DatasetSpec.load(prepared)
    sparse, _ = sample_inputs(spec, 50)
    offsets = spec.vocab_offsets
    fused = sparse.clone()
    for name, (a, b) in spec.layout.sparse.items():
        block = fused[:, a:b]
        fused[:, a:b] = torch.where(block == -1, block, block + offsets[name])
    assert torch.equal(field_ids(fused, spec), sparse)
    assert offsets["history"] == offsets["item"] > 0  # a shared vocabulary: the same rows


@pytest.mark.slow  # the ONNX exporter alone takes ~20 s
def test_onnx_export_of_the_full_layout_matches(exported):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    tmp, run_dir, _, _, want = exported
    out_dir = tmp / "export_onnx"
    done = mtlrec("export", str(run_dir), "--format", "onnx", "--output", str(out_dir), cwd=tmp)
    assert done.returncode == 0, done.stderr
    score, info = load_export(out_dir)
    assert sorted(info["files"]) == sorted([*FILES[:1], "model.onnx", *FILES[2:]])
    sparse_ids, dense = exported_inputs(tmp / "raw" / "test.csv", out_dir)
    got = score(sparse_ids.numpy(), dense.numpy())
    expected = np.stack([want.column(n).to_numpy() for n in info["outputs"]["columns"]], 1)
    assert np.abs(got - expected).max() <= EXPORT_TOLERANCE


def test_a_corrupt_export_file_is_one_line_wherever_it_is_loaded(exported, tmp_path):
    tmp, _, _, out_dir, _ = exported
    ok = mtlrec("export", "--verify", str(out_dir), cwd=tmp)
    assert ok.returncode == 0, ok.stderr
    assert lines(ok.stdout) == [
        f"{out_dir}: 4 files match export.json's SHA-256; the model model.pt scores 1,024 sample rows: OK"
    ]
    for name in ("model.pt", "vocab.parquet"):
        bad = tmp_path / name.replace(".", "_")
        shutil.copytree(out_dir, bad)
        data = bytearray((bad / name).read_bytes())
        data[len(data) // 2] ^= 0xFF  # one flipped byte
        (bad / name).write_bytes(bytes(data))
        got = hashlib.sha256(bytes(data)).hexdigest()[:16]
        want = json.loads((bad / "export.json").read_text())["files"][name][:16]
        line = (
            f"{bad / name}: SHA-256 {got}... differs from export.json's {want}...; the file is "
            "corrupt or was changed: export again"
        )
        if name == "model.pt":  # through the CLI once; the library raises the same line
            done = mtlrec("export", "--verify", str(bad), cwd=tmp_path)
            assert (done.returncode, done.stdout, lines(done.stderr)) == (
                1,
                "",
                [f"mtlrec export: error: {line}"],
            )
        with pytest.raises(MtlrecError) as info:
            exported_inputs(tmp / "raw" / "test.csv", bad)
        assert str(info.value) == line
    odd = tmp_path / "odd"
    shutil.copytree(out_dir, odd)
    manifest = json.loads((odd / "export.json").read_text())
    manifest["files"]["../secret"] = "0" * 64
    (odd / "export.json").write_text(json.dumps(manifest))
    with pytest.raises(MtlrecError) as info:
        load_export(odd)
    assert str(info.value) == (
        f"{odd / 'export.json'}: `files` names '../secret', not a file of the export dir; export again"
    )
    gone = tmp_path / "gone"
    shutil.copytree(out_dir, gone)
    (gone / "spec.json").unlink()
    with pytest.raises(MtlrecError) as info:
        load_export(gone)
    assert str(info.value) == (
        f"{gone / 'spec.json'}: missing, though export.json lists it; export again"
    )


@pytest.mark.parametrize("clash", ["sparse_ids", "dense"])
def test_a_task_named_like_an_export_input_is_refused_in_one_line(rich_run, monkeypatch, clash):
    """Outputs are named by the tasks: one named like an input would name two tensors. The run's
    own task names are fine; the model here claims a task `clash` (as a dataset whose task is
    called so would train it) and nothing is written."""
    from mtlrec.inference.export import ExportedModel, export

    tmp, run_dir, _ = rich_run
    names = property(lambda self: ["rich", clash])
    monkeypatch.setattr(ExportedModel, "columns", names)
    out_dir = tmp / f"refused_{clash}"
    with pytest.raises(MtlrecError) as e:
        export(run_dir, "onnx", output=out_dir)
    assert str(e.value) == (
        f"{run_dir / 'checkpoints' / 'best.pt'}: task output '{clash}' has the name of an export "
        "input (sparse_ids, dense); the exported outputs are named by the tasks: train the model "
        "with another task name to export it"
    )
    assert not out_dir.exists()
