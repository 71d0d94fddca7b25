"""mtlrec evaluate / predict / export on a real (tiny) trained run."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from conftest import run_training
from helpers.cli import BAR, run_in_pty, screen_segments
from mtlrec.data.loader import load_split
from mtlrec.data.sources import resolve_dataset_dir
from mtlrec.data.spec import DatasetSpec, FeatureSpec, TaskSpec
from mtlrec.errors import MtlrecError
from mtlrec.inference import encode_features, evaluate, export, predict, score
from mtlrec.training.checkpoint import load_checkpoint, model_from_checkpoint


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """An ESMM run (outputs ctr, cvr, ctcvr) and its dataset dir."""
    run_dir, metrics = run_training(tmp_path_factory.mktemp("inference"), [])
    payload = load_checkpoint(run_dir / "checkpoints" / "best.pt")
    data_dir = resolve_dataset_dir(payload["config"]["dataset"])
    return run_dir, metrics, data_dir


def test_evaluate_reproduces_the_runs_own_test_and_val_metrics_exactly(trained):
    run_dir, metrics, data_dir = trained
    want_test = {k: v for k, v in metrics["metrics"].items() if k.startswith("test/")}
    want_val = {k: v for k, v in metrics["metrics"].items() if k.startswith("val/")}
    assert len(want_test) >= 8
    assert evaluate(run_dir) == want_test
    assert evaluate(run_dir, split="val") == want_val
    assert evaluate(run_dir, data=str(data_dir)) == want_test  # a prepared dir: its test split
    assert evaluate(run_dir, data=str(data_dir / "test.parquet")) == want_test  # one file

    # Through the real CLI, as JSON.
    out = subprocess.run(
        [sys.executable, "-m", "mtlrec", "evaluate", str(run_dir), "--json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == want_test


def test_evaluate_errors_are_one_line(trained, tmp_path):
    run_dir, _, data_dir = trained
    with pytest.raises(MtlrecError, match=r"--split nope: the run's dataset has splits"):
        evaluate(run_dir, split="nope")
    with pytest.raises(MtlrecError, match=f"^{tmp_path / 'x'}: no such run dir$"):
        evaluate(tmp_path / "x")
    other = tmp_path / "other"
    other.mkdir()
    spec = DatasetSpec.load(data_dir)
    changed = DatasetSpec(
        name=spec.name,
        features=(FeatureSpec("user_id", "sparse", 7), *spec.features[1:]),
        labels=spec.labels,
        tasks=spec.tasks,
        funnel=spec.funnel,
        splits=spec.splits,
    )
    changed.save(other)
    with pytest.raises(
        MtlrecError, match="its features differ from the ones the model was trained"
    ):
        evaluate(run_dir, data=str(other))


def _model(run_dir: Path):
    return model_from_checkpoint(load_checkpoint(run_dir / "checkpoints" / "best.pt"))


def test_predict_streams_batches_and_matches_the_model(trained, tmp_path):
    run_dir, _, data_dir = trained
    model, spec, _ = _model(run_dir)
    table = pq.read_table(data_dir / spec.splits["test"])
    table = table.append_column("request_id", pa.array(np.arange(table.num_rows) * 10))
    src = tmp_path / "in.parquet"
    pq.write_table(table, src, row_group_size=128)
    dst = tmp_path / "out.parquet"
    rows, outputs = predict(run_dir, src, dst, batch_size=100, id_columns=["request_id"])
    assert rows == table.num_rows == 600 and outputs == ["ctr", "cvr", "ctcvr"]
    got = pq.read_table(dst)
    assert got.column_names == ["request_id", "ctr", "cvr", "ctcvr"]
    assert got.schema.field("ctr").type == pa.float32()
    assert got.column("request_id").to_pylist() == list(range(0, 6000, 10))
    split = load_split(data_dir / spec.splits["test"], spec)
    want = score(model, split.sparse, split.dense)
    for name in outputs:
        p = got.column(name).to_numpy()
        assert ((p >= 0) & (p <= 1)).all()
        np.testing.assert_allclose(p, want[name], rtol=0, atol=1e-6)
    # ESMM: pCTCVR = pCTR * pCVR.
    np.testing.assert_allclose(
        got.column("ctcvr").to_numpy(),
        got.column("ctr").to_numpy() * got.column("cvr").to_numpy(),
        rtol=1e-4,
        atol=1e-7,
    )
    assert not list(tmp_path.glob(".*.tmp"))


def test_predict_cli_and_bad_input_leaves_nothing_half_written(trained, tmp_path):
    run_dir, _, data_dir = trained
    spec = DatasetSpec.load(data_dir)
    table = pq.read_table(data_dir / spec.splits["test"])
    ids = table.column("user_id").to_numpy().copy()
    ids[450] = 10**9  # an unseen user in the 5th batch; the spec has no oov_id for user_id
    bad = table.set_column(table.schema.get_field_index("user_id"), "user_id", pa.array(ids))
    src, dst = tmp_path / "bad.parquet", tmp_path / "out.parquet"
    pq.write_table(bad, src)
    out = subprocess.run(
        [sys.executable, "-m", "mtlrec", "predict", str(run_dir), "--input", str(src)]
        + ["--output", str(dst), "--batch-size", "100"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 1
    assert out.stderr.strip() == (
        f"mtlrec predict: error: {src} (rows from 400): sparse column 'user_id' has 1 values "
        "outside [0, 20000) (e.g. 1000000000) and the feature spec has no oov_id to map them to"
    )
    assert "Traceback" not in out.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.parquet"]  # no output, no temp

    with pytest.raises(MtlrecError, match=r"missing column\(s\) \['item_id'\]"):
        predict(run_dir, _without(table, "item_id", tmp_path), dst)
    with pytest.raises(MtlrecError, match=r"--id-columns \['ctr'\] clash"):
        predict(run_dir, src, dst, id_columns=["ctr"])


def _without(table: pa.Table, column: str, where: Path) -> Path:
    path = where / f"no_{column}.parquet"
    pq.write_table(table.drop([column]), path)
    return path


def test_unseen_categorical_values_map_to_the_oov_id():
    spec = DatasetSpec(
        name="t",
        features=(
            FeatureSpec("a", "sparse", vocab_size=5, oov_id=0),
            FeatureSpec("b", "sparse", vocab_size=3),
            FeatureSpec("x", "dense"),
        ),
        labels=("y",),
        tasks=(TaskSpec("y", "y"),),
    )
    batch = pa.table(
        {
            "a": pa.array([1, 7, -1, None], type=pa.int64()),
            "b": pa.array([0, 1, 2, 2], type=pa.int32()),
            "x": pa.array([0.5, 1.0, 2.0, 3.0]),
        }
    )
    sparse, dense = encode_features(batch, spec, "t.parquet")
    assert sparse.tolist() == [[1, 5], [0, 6], [0, 7], [0, 7]]  # b is offset by vocab(a) = 5
    assert dense.dtype == torch.float32 and dense[:, 0].tolist() == [0.5, 1.0, 2.0, 3.0]
    no_oov = batch.set_column(1, "b", pa.array([0, 3, 1, 1]))
    with pytest.raises(MtlrecError) as info:
        encode_features(no_oov, spec, "t.parquet")
    assert str(info.value) == (
        "t.parquet: sparse column 'b' has 1 values outside [0, 3) (e.g. 3) and the feature spec "
        "has no oov_id to map them to"
    )


def _real_inputs(run_dir: Path, data_dir: Path):
    model, spec, _ = _model(run_dir)
    table = pq.read_table(data_dir / spec.splits["test"])
    raw = np.stack([table.column(f.name).to_numpy() for f in spec.sparse], 1).astype(np.int64)
    dense = np.stack([table.column(f.name).to_numpy() for f in spec.dense], 1).astype(np.float32)
    split = load_split(data_dir / spec.splits["test"], spec)
    want = score(model, split.sparse, split.dense)
    return raw, dense, np.stack([want[n] for n in model.output_types], 1)


@pytest.mark.filterwarnings("ignore:`torch.jit")  # deprecated in torch 2.13, still asked for
def test_export_torchscript_is_standalone_and_matches(trained, tmp_path):
    run_dir, _, data_dir = trained
    result = export(run_dir, "torchscript", tmp_path / "ts")
    assert result["max_abs_diff"] <= 1e-5 and result["outputs"] == ["ctr", "cvr", "ctcvr"]
    info = json.loads((tmp_path / "ts" / "export.json").read_text())
    assert info["outputs"]["columns"] == ["ctr", "cvr", "ctcvr"]
    assert DatasetSpec.load(tmp_path / "ts").features == _model(run_dir)[1].features
    extra = {"mtlrec.json": ""}  # the task names travel inside the model file
    loaded = torch.jit.load(str(tmp_path / "ts" / "model.pt"), _extra_files=extra)
    meta = json.loads(extra["mtlrec.json"])
    assert json.loads(meta["mtlrec.outputs"]) == ["ctr", "cvr", "ctcvr"]
    assert json.loads(meta["mtlrec.output_kinds"]) == ["binary"] * 3
    raw, dense, want = _real_inputs(run_dir, data_dir)
    with torch.no_grad():
        got = loaded(torch.from_numpy(raw), torch.from_numpy(dense))
    assert list(got) == ["ctr", "cvr", "ctcvr"]  # one output per task, named by it
    assert all(v.shape == (600,) for v in got.values())
    np.testing.assert_allclose(np.stack([got[k].numpy() for k in got], 1), want, rtol=0, atol=1e-5)

    out = subprocess.run(
        [sys.executable, "-m", "mtlrec", "export", str(run_dir), "--format", "torchscript"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert "check: torchscript vs PyTorch on 1,024 sample rows: max |diff|" in out.stdout
    assert out.stdout.rstrip().endswith("<= 1e-05: OK")
    assert (run_dir / "export" / "model.pt").is_file()


def test_export_onnx_matches_in_onnxruntime(trained, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    onnx = pytest.importorskip("onnx")
    run_dir, _, data_dir = trained
    dest = tmp_path / "both"

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "mtlrec", "export", *args],
            capture_output=True,
            text=True,
            timeout=120,
        )

    # a TorchScript export, then an ONNX one of the same checkpoint into the same dir: both kept
    for fmt in ("torchscript", "onnx"):
        out = cli(str(run_dir), "--format", fmt, "--output", str(dest))
        assert out.returncode == 0, out.stderr
    assert "(kept model.pt: the same checkpoint's)" in out.stdout
    info = json.loads((dest / "export.json").read_text())
    assert sorted(info["files"]) == ["model.onnx", "model.pt", "spec.json"]
    assert {f: m["model_file"] for f, m in info["models"].items()} == {
        "torchscript": "model.pt",
        "onnx": "model.onnx",
    }
    verified = cli("--verify", str(dest))  # about the export: no dataset advice on stderr
    assert (verified.returncode, verified.stderr) == (0, "")
    assert verified.stdout == (
        f"{dest}: 3 files match export.json's SHA-256; the models model.pt and model.onnx each "
        "score 1,024 sample rows: OK\n"
    )
    # an ONNX export of another checkpoint would mix two models in one dir: refused, dir as it was
    info["checkpoint_sha256"] = "0" * 64
    (dest / "export.json").write_text(json.dumps(info))
    before = {p.name: p.read_bytes() for p in dest.iterdir()}
    refused = cli(str(run_dir), "--format", "onnx", "--output", str(dest))
    assert refused.returncode == 1 and refused.stderr.splitlines()[-1] == (
        f"mtlrec export: error: --output {dest}: holds a torchscript export (model.pt) of "
        "another checkpoint, fusion or outputs than this onnx export; export into another "
        f"--output to keep both, or remove {dest} first to replace it"
    )
    assert {p.name: p.read_bytes() for p in dest.iterdir()} == before
    path = str(dest / "model.onnx")
    props = {p.key: p.value for p in onnx.load(path).metadata_props}
    assert json.loads(props["mtlrec.outputs"]) == ["ctr", "cvr", "ctcvr"]
    assert json.loads(props["mtlrec.tasks"]) == ["ctr", "cvr", "ctcvr"]
    session = ort.InferenceSession(path)
    assert [o.name for o in session.get_outputs()] == ["ctr", "cvr", "ctcvr"]
    raw, dense, want = _real_inputs(run_dir, data_dir)
    got = session.run(None, {"sparse_ids": raw, "dense": dense})
    assert [g.shape for g in got] == [(600,)] * 3
    np.testing.assert_allclose(np.stack(got, 1), want, rtol=0, atol=1e-5)


# -- predict never overwrites, never half-writes, cleans up after a killed predict ---------------
def _predict_cli(run_dir: Path, src: Path, dst: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mtlrec", "predict", str(run_dir), "--input", str(src)]
        + ["--output", str(dst), *extra],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_predict_refuses_an_existing_output_unless_overwrite(trained, tmp_path):
    run_dir, _, data_dir = trained
    src = data_dir / DatasetSpec.load(data_dir).splits["test"]
    dst = tmp_path / "out.parquet"
    dst.write_bytes(b"precious")
    out = _predict_cli(run_dir, src, dst)
    assert out.returncode == 1 and out.stdout == ""
    assert out.stderr == (
        f"mtlrec predict: error: --output {dst}: already exists; pass --overwrite to replace it\n"
    )
    assert dst.read_bytes() == b"precious"
    out = _predict_cli(run_dir, src, dst, "--overwrite")
    assert out.returncode == 0, out.stderr
    assert pq.read_table(dst).num_rows == 600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.parquet"]  # no temp left


def test_predict_output_mode_follows_the_umask(trained, tmp_path):
    run_dir, _, data_dir = trained
    src = data_dir / DatasetSpec.load(data_dir).splits["test"]
    old = os.umask(0o027)
    try:
        predict(run_dir, src, tmp_path / "out.parquet")
    finally:
        os.umask(old)
    assert (tmp_path / "out.parquet").stat().st_mode & 0o777 == 0o640


def test_predict_refuses_its_input_and_a_directory_as_output(trained, tmp_path):
    run_dir, _, data_dir = trained
    src = tmp_path / "in.parquet"
    shutil.copy(data_dir / DatasetSpec.load(data_dir).splits["test"], src)
    before = src.read_bytes()
    for same in (src, tmp_path / "." / "in.parquet"):
        for overwrite in (False, True):
            with pytest.raises(MtlrecError) as info:
                predict(run_dir, src, same, overwrite=overwrite)
            assert str(info.value) == (
                f"--output {same} is the --input file; write the predictions to another file"
            )
    assert src.read_bytes() == before
    with pytest.raises(MtlrecError) as info:
        predict(run_dir, src, tmp_path)
    assert str(info.value) == (
        f"--output {tmp_path}: is a directory; name a file, e.g. {tmp_path / 'predictions.parquet'}"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.parquet"]


def test_predict_removes_the_temp_files_of_killed_predicts(trained, tmp_path):
    run_dir, _, data_dir = trained
    src = data_dir / DatasetSpec.load(data_dir).splits["test"]
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], text=True, capture_output=True
    ).stdout.strip()  # a pid that no longer runs
    stale = tmp_path / f".out.parquet.predict-{gone}-0a1b2c3d.tmp"
    live = tmp_path / f".other.parquet.predict-{os.getpid()}-0a1b2c3d.tmp"  # a running predict's
    stale.write_bytes(b"x" * 1000)
    live.write_bytes(b"y")
    predict(run_dir, src, tmp_path / "out.parquet")
    assert sorted(p.name for p in tmp_path.iterdir()) == [live.name, "out.parquet"]


def test_evaluate_json_into_a_closed_pipe_ends_quietly(trained):
    run_dir, _, _ = trained
    read_end, write_end = os.pipe()
    os.close(read_end)  # `| head -1` has already left
    try:
        out = subprocess.run(
            [sys.executable, "-m", "mtlrec", "evaluate", str(run_dir), "--json"],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=120,
        )
    finally:
        os.close(write_end)
    assert (out.returncode, out.stderr) == (141, "")


def test_evaluate_json_through_head(trained):
    run_dir, _, _ = trained
    out = subprocess.run(
        [
            "bash",
            "-c",
            f"set -o pipefail; {sys.executable} -m mtlrec evaluate '{run_dir}' --json | head -1",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.stdout == "{\n" and out.stderr == ""
    assert out.returncode in (0, 141)


def test_export_model_file_follows_the_umask_and_leaves_no_temp(trained, tmp_path):
    run_dir, _, _ = trained
    old = os.umask(0o027)
    try:
        export(run_dir, "torchscript", tmp_path / "ts", sample_rows=64)
    finally:
        os.umask(old)
    assert (tmp_path / "ts" / "model.pt").stat().st_mode & 0o777 == 0o640
    assert not [p.name for p in (tmp_path / "ts").iterdir() if p.name.endswith(".tmp")]


def test_predict_draws_a_progress_bar_on_a_terminal_only(trained, tmp_path):
    run_dir, _, data_dir = trained
    src = data_dir / DatasetSpec.load(data_dir).splits["test"]
    dst = tmp_path / "a.parquet"
    args = [
        "predict",
        str(run_dir),
        "--input",
        str(src),
        "--output",
        str(dst),
        "--batch-size",
        "50",
    ]
    code, out = run_in_pty([sys.executable, "-m", "mtlrec", *args], tmp_path)
    summary = f"{dst}: 600 rows, columns ['ctr', 'cvr', 'ctcvr']"
    assert code == 0, out
    assert BAR in out and summary in screen_segments(out)
    assert not [s for s in screen_segments(out) if BAR in s and "rows, columns" in s]
    dst.unlink()
    plain = _predict_cli(run_dir, src, dst, "--batch-size", "50")  # stdout is a pipe: no bar
    assert (plain.returncode, plain.stdout, plain.stderr) == (0, summary + "\n", "")


def test_raw_input_of_a_generated_dataset_is_one_line(trained, tmp_path):
    run_dir, _, data_dir = trained
    src = tmp_path / "raw.csv"
    pq.read_table(data_dir / "test.parquet").to_pandas().head(5).to_csv(src, index=False)
    out = _predict_cli(run_dir, src, tmp_path / "out.parquet")
    assert (out.returncode, out.stdout) == (1, "")
    assert out.stderr == (
        f"mtlrec predict: error: {data_dir}: dataset 'synthetic_ccp' is generated in code "
        "(mtlrec.data.synthetic_ccp) and has no raw form to encode; score its prepared parquet "
        "rows instead\n"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw.csv"]


@pytest.mark.filterwarnings("ignore:`torch.jit")
def test_export_of_a_generated_dataset_lists_the_model_and_spec_only(trained, tmp_path):
    import hashlib

    run_dir, _, _ = trained
    out_dir = tmp_path / "ts"
    out_dir.mkdir()
    (out_dir / "encoders.json").write_text("{}")  # an earlier export's: not this model's
    earlier = {"format": "torchscript", "model_file": "model.pt", "files": {}}
    earlier["files"] = {"model.pt": "0" * 64, "encoders.json": "0" * 64}
    (out_dir / "export.json").write_text(json.dumps(earlier))
    export(run_dir, "torchscript", out_dir, sample_rows=64)
    info = json.loads((out_dir / "export.json").read_text())
    assert sorted(info["files"]) == ["model.pt", "spec.json"]
    assert (
        info["files"]["model.pt"] == hashlib.sha256((out_dir / "model.pt").read_bytes()).hexdigest()
    )
    assert not (out_dir / "encoders.json").exists()
    assert info["inputs"]["sparse_ids"]["shape"] == ["batch", 11]  # 11 single-id fields
    assert info["inputs"]["sparse_ids"]["columns"] == [
        f.name for f in DatasetSpec.load(out_dir).sparse
    ]


def test_a_float_id_column_of_a_generated_dataset_is_a_type_error(trained, tmp_path):
    """A parquet whose sparse column is not integer would be raw values, but a generated dataset
    has no raw form: the line names the column's type instead."""
    run_dir, _, data_dir = trained
    table = pq.read_table(data_dir / "test.parquet")
    i = table.schema.get_field_index("user_id")
    table = table.set_column(i, "user_id", table.column("user_id").cast(pa.float64()))
    src = tmp_path / "floats.parquet"
    pq.write_table(table, src)
    with pytest.raises(MtlrecError) as info:
        predict(run_dir, src, tmp_path / "out.parquet")
    assert str(info.value) == (
        f"{src}: sparse column 'user_id' has type double; it must hold integer ids"
    )


@pytest.mark.parametrize(
    "given", [["user_id,item_id"], ["user_id", "item_id"], ["user_id,", "item_id"]]
)
def test_predict_id_columns_take_commas_or_spaces(trained, tmp_path, given):
    run_dir, _, data_dir = trained
    spec = DatasetSpec.load(data_dir)
    src, dst = data_dir / spec.splits["test"], tmp_path / "out.parquet"
    out = subprocess.run(
        [sys.executable, "-m", "mtlrec", "predict", str(run_dir), "--input", str(src)]
        + ["--output", str(dst), "--id-columns", *given],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    table = pq.read_table(dst)
    assert table.column_names[:2] == ["user_id", "item_id"]
    source = pq.read_table(src)
    assert table.column("item_id").to_pylist() == source.column("item_id").to_pylist()
