"""The bad-input table (docs/errors.md): each case gives one line, a non-zero exit, no traceback
(unless HYDRA_FULL_ERROR=1) and no half-written file. A representative set goes through the real
`mtlrec` command in a subprocess, the rest in-process; a property test feeds random frames and
schemas to the loader."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf

from conftest import TINY, compose_train, run_training
from mtlrec.data.loader import load_split
from mtlrec.data.sources import resolve_dataset_dir
from mtlrec.data.spec import DatasetSpec, FeatureSpec, TaskSpec
from mtlrec.errors import MtlrecError
from mtlrec.models import MODELS, model_config
from mtlrec.training.checkpoint import check_compatible, load_checkpoint, load_resumable
from mtlrec.training.trainer import TrainerConfig

# -- helpers -------------------------------------------------------------------------------------
NO_DATA = [o for o in TINY if not o.startswith("dataset.")]  # for dataset=prepared runs


@pytest.fixture(scope="module")
def tiny_dir():
    return resolve_dataset_dir(compose_train(TINY).dataset)


def prepared_copy(src: Path, dst: Path, mutate=None, split: str = "train") -> Path:
    """A copy of the tiny prepared dataset whose `split` file is rewritten by `mutate(table)`
    (without its checksums.json then, as a dataset made by other tools or before checksums:
    the loader's own checks are what is tested; tests/data/test_checksums.py tests the sums)."""
    shutil.copytree(src, dst)
    if mutate is not None:
        path = dst / f"{split}.parquet"
        pq.write_table(mutate(pq.read_table(path)), path)
        (dst / "checksums.json").unlink()
    return dst


def replace(table: pa.Table, column: str, values) -> pa.Table:
    return table.set_column(table.schema.get_field_index(column), column, values)


def with_value(column: str, row: int, value, dtype=None):
    def mutate(table: pa.Table) -> pa.Table:
        values = table.column(column).to_numpy().astype(dtype or np.float64)
        values[row] = value
        return replace(table, column, pa.array(values))

    return mutate


def mtlrec(args: list[str], cwd: Path, full_error: bool = False) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    if full_error:
        env["HYDRA_FULL_ERROR"] = "1"
    return subprocess.run(
        [sys.executable, "-m", "mtlrec", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )


def assert_one_line(proc: subprocess.CompletedProcess, message: str) -> None:
    """The message is one whole line of stderr; non-zero exit; no traceback."""
    assert proc.returncode != 0
    lines = [ln.strip() for ln in proc.stderr.splitlines()]
    assert any(ln.endswith(message) for ln in lines), proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout


def assert_nothing_half_written(root: Path) -> None:
    left = [p for p in root.rglob("*") if p.name.endswith(".tmp") or p.suffix == ".pt"]
    assert left == []
    for metrics in root.rglob("metrics.json"):
        assert json.loads(metrics.read_text())["status"] == "failed"


# -- through the real CLI ------------------------------------------------------------------------
CLI_CASES = {
    "unknown model": (
        ["model=foo"],
        "mtlrec train: error: Could not find 'model/foo': unknown model 'foo'; valid: "
        + ", ".join(sorted(MODELS)),
    ),
    "typo in an override key": (
        ["trainer.lrr=0.1"],
        "mtlrec train: error: Could not override 'trainer.lrr': no such key; did you mean "
        "'trainer.lr'?",
    ),
    "batch_size=0": (["trainer.batch_size=0"], "trainer.batch_size must be an integer >= 1, got 0"),
    # found before the run dir exists (they failed inside a run, leaving a failed run dir)
    "esm2 without the action label": (
        ["model=esm2"],
        "mtlrec train: error: model=esm2 needs a D-action label (cart or wish) in the funnel, but "
        "dataset 'synthetic_ccp' declares no funnel.action;",
    ),
    "gauc_by a field the data does not have": (
        ["metrics.gauc_by=nope"],
        "mtlrec train: error: metrics.gauc_by='nope': not a single-id field of dataset "
        "'synthetic_ccp'; use one of ['user_id',",
    ),
}


@pytest.mark.parametrize("case", sorted(CLI_CASES))
def test_cli_bad_input_is_one_line(case, tmp_path):
    overrides, message = CLI_CASES[case]
    proc = mtlrec(["train", *TINY, *overrides, f"hydra.run.dir={tmp_path / 'run'}"], tmp_path)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    # an override naming no key or option is a wrong command line (2); a bad value is an error (1)
    assert proc.returncode == (2 if "Could not" in message else 1)
    assert "Traceback" not in proc.stderr + proc.stdout
    assert any(message in ln for ln in lines), proc.stderr
    if "error:" in message:  # stopped before Hydra: nothing at all was written
        assert lines == [ln for ln in lines if ln.startswith("mtlrec train: error: ")]
        assert len(lines) == 1 and not (tmp_path / "run").exists()
    assert_nothing_half_written(tmp_path)


def test_cli_bad_labels_then_full_error_shows_the_traceback(tiny_dir, tmp_path):
    data = prepared_copy(tiny_dir, tmp_path / "data", with_value("click", 3, 2.0))
    args = ["train", *NO_DATA, "dataset=prepared", f"dataset.path={data}"]
    proc = mtlrec([*args, f"hydra.run.dir={tmp_path / 'run'}"], tmp_path)
    assert_one_line(
        proc,
        f"{data / 'train.parquet'}: label column 'click' of a binary task has 1 values outside "
        "{0,1} (e.g. 2)",
    )
    assert_nothing_half_written(tmp_path)


def test_full_error_shows_the_traceback(tmp_path):
    full = mtlrec(["train", "model=foo"], tmp_path, full_error=True)
    assert full.returncode == 1 and "Traceback (most recent call last)" in full.stderr
    assert "OverrideError: Could not find 'model/foo': unknown model 'foo'" in full.stderr


def test_cli_unwritable_output_dir(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    proc = mtlrec(["train", *TINY, f"hydra.run.dir={blocker / 'run'}"], tmp_path)
    assert_one_line(
        proc,
        f"{blocker / 'run'}: cannot create the run dir ({blocker} is not a writable directory); "
        "set hydra.run.dir to a writable place",
    )


def test_cli_resume_dir_without_checkpoint(tmp_path):
    """A run dir that got an epoch in (history.csv) but lost its checkpoints: one line, and the
    refused resume changes nothing. (One stopped before any epoch starts again: test_resume_cli.)"""
    run_dir = tmp_path / "run"
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "overrides.yaml").write_text(f"- {TINY[0]}\n")
    (run_dir / "history.csv").write_text("epoch,train/loss\n1,0.5\n")
    (run_dir / "metrics.json").write_text('{"status": "interrupted", "wall_seconds": 3.0}')
    proc = mtlrec(["train", f"resume={run_dir}"], tmp_path)
    assert_one_line(
        proc,
        f"{run_dir}: no checkpoint to resume from ({run_dir / 'checkpoints' / 'last.pt'} does not "
        "exist); the run stopped before its first checkpoint: start it again without resume=",
    )
    assert (
        run_dir / "metrics.json"
    ).read_text() == '{"status": "interrupted", "wall_seconds": 3.0}'
    assert sorted(p.name for p in (run_dir / ".hydra").iterdir()) == ["overrides.yaml"]
    nowhere = mtlrec(["train", f"resume={tmp_path / 'nowhere'}"], tmp_path)
    assert_one_line(nowhere, f"mtlrec train: error: resume={tmp_path / 'nowhere'}: no such run dir")


# -- in-process ----------------------------------------------------------------------------------
CONFIG_CASES = [
    (["model=mmoe", "model.num_experts=0"], "model.num_experts must be an integer >= 1, got 0"),
    (
        ["model=mmoe", "model.expert_dims=[]"],
        "model.expert_dims must list at least one layer size, e.g. [64, 32]; got []",
    ),
    (
        ["model=mmoe", "model.tower_dims=[-1]"],
        "model.tower_dims must hold positive integers, got [-1]",
    ),
    (["model.embedding_dim=0"], "model.embedding_dim must be an integer >= 1, got 0"),
    (
        ["model.name=foo"],
        f"model.name 'foo' is unknown; valid models: {sorted(MODELS)}",
    ),
    (["trainer.batch_size=0"], "trainer.batch_size must be an integer >= 1, got 0"),
    (["trainer.lr=0"], "trainer.lr must be > 0, got 0"),
    (["trainer.lr=-0.1"], "trainer.lr must be > 0, got -0.1"),
    (["trainer.nan_check_every=0"], "trainer.nan_check_every must be an integer >= 1, got 0"),
]


@pytest.mark.parametrize("overrides, message", CONFIG_CASES)
def test_invalid_sizes(overrides, message):
    cfg = OmegaConf.to_container(compose_train(overrides), resolve=True)
    with pytest.raises(MtlrecError) as info:
        model_config(cfg["model"])
        TrainerConfig(**cfg["trainer"]).validate()
    assert str(info.value) == message


def test_invalid_checkpoint_interval_and_cuda_without_gpu(tmp_path):
    with pytest.raises(MtlrecError) as info:
        run_training(tmp_path, ["checkpoint.every_n_steps=0"])
    assert str(info.value) == "checkpoint.every_n_steps must be an integer >= 1 or null, got 0"
    if not torch.cuda.is_available():
        with pytest.raises(MtlrecError) as info:
            run_training(tmp_path, ["device=cuda"], name="cuda")
        assert str(info.value) == (
            "device=cuda but no CUDA GPU is visible to torch (torch.cuda.is_available() is False); "
            "use device=cpu or device=auto"
        )
    assert_nothing_half_written(tmp_path)


def _spec(directory: Path) -> DatasetSpec:
    return DatasetSpec.load(directory)


DATA_CASES = {
    "empty parquet": (
        lambda t: t.slice(0, 0),
        "{path}: the split is empty (0 rows)",
    ),
    "missing column": (
        lambda t: t.drop(["item_brand"]),
        "{path}: missing column(s) ['item_brand'] required by the dataset spec",
    ),
    "wrong dtype": (
        lambda t: replace(t, "user_city", pa.array([str(v) for v in t.column("user_city")])),
        "{path}: sparse column 'user_city' has type string; it must hold integer ids",
    ),
    "label outside {0,1}": (
        with_value("conversion", 0, 0.5),
        "{path}: label column 'conversion' of a binary task has 1 values outside {{0,1}} (e.g. 0.5)",
    ),
    "NaN label": (
        with_value("click", 5, np.nan),
        "{path}: label column 'click' has 1 NaN/inf/missing values",
    ),
    "negative id": (
        with_value("hour", 7, -3, np.int64),
        "{path}: sparse column 'hour' has 1 negative ids (min -3); ids must be >= 0",
    ),
    "id beyond the vocabulary without oov_id": (
        with_value("device", 1, 99, np.int64),
        "{path}: sparse column 'device' has 1 ids >= vocab_size 4 (max 99) and no oov_id in the spec",
    ),
    "NaN dense value": (
        with_value("item_price", 2, np.inf),
        "{path}: dense column 'item_price' has 1 NaN/inf/missing values",
    ),
}


@pytest.mark.parametrize("case", sorted(DATA_CASES))
def test_bad_split_files(case, tiny_dir, tmp_path):
    mutate, message = DATA_CASES[case]
    data = prepared_copy(tiny_dir, tmp_path / "data", mutate)
    spec = _spec(data)
    with pytest.raises(MtlrecError) as info:
        load_split(data / "train.parquet", spec, spec.tasks)
    assert str(info.value) == message.format(path=data / "train.parquet")


def test_missing_data_dir_split_file_and_spec(tiny_dir, tmp_path):
    from mtlrec.experiment import run

    cfg = compose_train([*NO_DATA, "dataset=prepared", "dataset.path=/nonexistent/data"])
    with pytest.raises(MtlrecError) as info:
        run(cfg, tmp_path / "run0")
    assert str(info.value) == (
        "/nonexistent/data: data dir of dataset 'prepared' does not exist; run `mtlrec prepare "
        "dataset=prepared` or fix dataset.path"
    )
    data = prepared_copy(tiny_dir, tmp_path / "data")
    (data / "val.parquet").unlink()
    cfg = compose_train([*NO_DATA, "dataset=prepared", f"dataset.path={data}"])
    with pytest.raises(MtlrecError) as info:
        run(cfg, tmp_path / "run")
    assert str(info.value) == (
        f"{data / 'val.parquet'}: split file not found; prepare the dataset first or fix dataset.path"
    )
    assert_nothing_half_written(tmp_path)
    (data / "spec.json").unlink()
    with pytest.raises(MtlrecError, match=r"holds no spec.json, so dataset 'prepared' is not"):
        run(cfg, tmp_path / "run2")


@pytest.fixture(scope="module")
def short_run(tmp_path_factory):
    return run_training(tmp_path_factory.mktemp("short"), ["trainer.epochs=1"])[0]


def test_checkpoint_of_another_model_or_feature_spec(short_run, tiny_dir):
    path = short_run / "checkpoints" / "last.pt"
    payload = load_checkpoint(path)
    spec = _spec(tiny_dir)
    check_compatible(payload, path, "esmm", spec)  # its own: fine
    with pytest.raises(MtlrecError) as info:
        check_compatible(payload, path, "mmoe", spec)
    assert str(info.value) == (
        f"{path}: checkpoint holds model 'esmm', not 'mmoe'; use the run's own model or start a new run"
    )
    other = DatasetSpec(
        name=spec.name,
        features=(FeatureSpec("user_id", "sparse", 999), *spec.features[1:]),
        labels=spec.labels,
        tasks=spec.tasks,
    )
    with pytest.raises(MtlrecError) as info:
        check_compatible(payload, path, "esmm", other)
    assert str(info.value) == (
        f"{path}: checkpoint was trained on other features than dataset 'synthetic_ccp' has "
        "(checkpoint vs data: ('user_id', 'sparse', 20000) != ('user_id', 'sparse', 999)); use the "
        "dataset the run was trained on"
    )


def test_resume_refuses_other_overrides_and_foreign_files(short_run, tmp_path):
    from mtlrec.experiment import run

    run_dir = tmp_path / "copy"
    shutil.copytree(short_run, run_dir)
    cfg = compose_train([*TINY, "trainer.epochs=1", "trainer.lr=0.01", f"resume={run_dir}"])
    with pytest.raises(MtlrecError) as info:
        run(cfg, run_dir)
    assert str(info.value).startswith(
        f"resume={run_dir / 'checkpoints' / 'last.pt'}: the override(s) trainer.lr=0.01 (was 0.001) "
        "differ from the run's config; with resume only trainer.epochs, trainer.progress, "
    )
    assert str(info.value).endswith("may change (start a new run for anything else)")
    (run_dir / "checkpoints" / "last.pt").write_bytes(b"PK\x03\x04 torn")
    with pytest.raises(MtlrecError) as info:
        load_resumable(run_dir / "checkpoints")
    assert str(info.value) == (
        f"{run_dir / 'checkpoints' / 'last.pt'}: checkpoint is truncated or corrupt (RuntimeError); "
        "use an older checkpoint"
    )
    torch.save({"weights": 1}, run_dir / "checkpoints" / "last.pt")
    with pytest.raises(MtlrecError, match=r"last.pt: not an mtlrec checkpoint$"):
        load_resumable(run_dir / "checkpoints")
    torch.save({"format": "mtlrec-checkpoint", "epoch": 1}, run_dir / "checkpoints" / "last.pt")
    with pytest.raises(MtlrecError) as info:
        load_resumable(run_dir / "checkpoints")
    assert str(info.value) == (
        f"{run_dir / 'checkpoints' / 'last.pt'}: checkpoint is incomplete (no ['model_name', "
        "'model_state', 'config', 'dataset_spec', 'loss_tasks']); use an older checkpoint"
    )
    with pytest.raises(MtlrecError, match=f"resume={tmp_path} but the run dir is {run_dir}"):
        run(compose_train([*TINY, f"resume={tmp_path}"]), run_dir)


# -- property test -------------------------------------------------------------------------------
COLUMN_KINDS = ("int", "small_int", "float", "nan_float", "string", "bool", "null_int")


def column_values(kind: str, n: int, draw) -> pa.Array:
    ints = st.integers(-5, 40)
    if kind == "int":
        return pa.array(draw(st.lists(ints, min_size=n, max_size=n)), type=pa.int64())
    if kind == "small_int":
        return pa.array(draw(st.lists(st.integers(0, 1), min_size=n, max_size=n)), type=pa.int8())
    if kind == "float":
        return pa.array(draw(st.lists(st.floats(-3, 3), min_size=n, max_size=n)))
    if kind == "nan_float":
        return pa.array(draw(st.lists(st.floats(allow_nan=True), min_size=n, max_size=n)))
    if kind == "string":
        return pa.array(draw(st.lists(st.text(max_size=3), min_size=n, max_size=n)))
    if kind == "bool":
        return pa.array(draw(st.lists(st.booleans(), min_size=n, max_size=n)))
    return pa.array(draw(st.lists(st.one_of(st.none(), ints), min_size=n, max_size=n)), pa.int64())


@st.composite
def frame_and_spec(draw):
    n = draw(st.integers(0, 6))
    names = draw(st.lists(st.sampled_from("abcdefg"), min_size=1, max_size=5, unique=True))
    table = pa.table(
        {c: column_values(draw(st.sampled_from(COLUMN_KINDS)), n, draw) for c in names}
    )
    pool = [*names, "zz"]  # "zz": a column the frame does not have
    sparse = draw(st.lists(st.sampled_from(pool), max_size=3, unique=True))
    rest = [c for c in pool if c not in sparse]
    dense = draw(st.lists(st.sampled_from(rest), max_size=2, unique=True)) if rest else []
    label_pool = [c for c in pool if c not in sparse and c not in dense] or ["yy"]
    label = draw(st.sampled_from(label_pool))
    features = []
    for c in sparse:
        vocab = draw(st.integers(1, 30))
        oov = draw(st.one_of(st.none(), st.integers(0, vocab - 1)))
        features.append(FeatureSpec(c, "sparse", vocab_size=vocab, oov_id=oov))
    features += [FeatureSpec(c, "dense") for c in dense]
    kind = draw(st.sampled_from(["binary", "regression"]))
    spec = DatasetSpec(
        name="random",
        features=tuple(features),
        labels=(label,),
        tasks=(TaskSpec("t", label, kind),),
        splits={"train": "train.parquet"},
    )
    return table, spec


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(frame_and_spec())
def test_random_frames_load_or_fail_with_one_clear_line(case):
    table, spec = case
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "train.parquet"
        pq.write_table(table, path)
        try:
            spec.validate("spec.json")
            split = load_split(path, spec, spec.tasks)
        except MtlrecError as e:
            message = str(e)
            assert message and "\n" not in message
            assert message.startswith((str(path), "spec.json"))
            return
    # Loaded: shapes, fused id range, finite values, binary labels in {0,1}.
    n = table.num_rows
    assert n > 0
    assert split.sparse.shape == (n, len(spec.sparse)) and split.sparse.dtype == torch.int64
    assert split.dense.shape == (n, len(spec.dense)) and torch.isfinite(split.dense).all()
    assert split.labels.shape == (n, 1) and torch.isfinite(split.labels).all()
    for j, (f, offset) in enumerate(zip(spec.sparse, spec.field_offsets, strict=True)):
        assert ((split.sparse[:, j] >= offset) & (split.sparse[:, j] < offset + f.vocab_size)).all()
    if spec.tasks[0].type == "binary":
        assert set(split.labels.unique().tolist()) <= {0.0, 1.0}


@settings(max_examples=100, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["name", "features", "labels", "tasks", "funnel", "splits", "info"]),
        st.one_of(
            st.none(),
            st.integers(),
            st.text(max_size=4),
            st.lists(
                st.dictionaries(
                    st.sampled_from(["name", "kind", "vocab_size", "oov_id", "label", "type"]),
                    st.one_of(st.integers(-2, 5), st.text(max_size=3), st.none()),
                ),
                max_size=3,
            ),
        ),
    )
)
def test_random_spec_dicts_parse_or_fail_with_one_clear_line(d):
    try:
        DatasetSpec.from_dict(d, source="spec.json")
    except MtlrecError as e:
        assert str(e).startswith("spec.json") and "\n" not in str(e)


@pytest.mark.parametrize(
    "override, message",
    [
        (
            "dataset=foo",
            "Could not find 'dataset/foo': unknown dataset 'foo'; valid: aliccp, aliexpress, "
            "census, mmoe_synthetic, movielens, prepared, synthetic_ccp",
        ),
        ("device=tpu", "Could not find 'device/tpu': unknown device 'tpu'; valid: auto, cpu, cuda"),
        ("trainer.lr=[1", "cannot parse the override(s) ['trainer.lr=[1']"),
    ],
)
def test_override_precheck_in_process(override, message):
    from mtlrec.cli import check_overrides

    with pytest.raises(ValueError) as info:
        check_overrides(["seed=1", override])
    assert str(info.value).startswith(message)
    check_overrides(["seed=1", "model=mmoe", "model.num_experts=3"])  # fine: no error
    check_overrides(["-m", "model=nonexistent"])  # multirun and flags: left to Hydra


@pytest.mark.parametrize("suffix", [".csv.gz", ".csv"])
def test_a_corrupt_raw_file_header_is_one_line(tmp_path, suffix):
    """A gzip stream that does not decompress (zlib.error, not an OSError) and bytes that are not
    UTF-8: one line naming the file."""
    from mtlrec.data.prepare.plan import ReadOptions
    from mtlrec.data.prepare.reading import header_columns

    path = tmp_path / f"train{suffix}"
    path.write_bytes(b"\x1f\x8b\x08\x00garbage" * 50 if suffix == ".csv.gz" else b"\xff\xfeu\x00")
    with pytest.raises(MtlrecError) as e:
        header_columns(path, ReadOptions())
    assert str(e.value).startswith(f"{path}: cannot read the file (")
    assert "\n" not in str(e.value)
