"""What a command may write over (mtlrec/outputs.py, data/prepare/replace.py), through the real
`mtlrec`: each line is the one docs/errors.md shows ("What a command may write over"), and the
files a refusal protects are byte for byte unchanged."""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from helpers.datagen import REPO

from .test_errors_doc import _as_pattern, _doc_line

pytestmark = pytest.mark.slow  # ~30 real `mtlrec` processes

sys.path.insert(0, str(REPO / "scripts"))

from bad_input_cases import build_base  # noqa: E402


def mtlrec(args: list[str], cwd: Path, env: dict[str, str] | None = None):
    import os

    full = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    full.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    return subprocess.run(
        [sys.executable, "-m", "mtlrec", *args],
        cwd=cwd,
        env={**full, **(env or {})},
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
    )


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """raw/, raw2/ (CSVs), data/tiny (prepared from raw), run/ (one epoch), preds.parquet."""
    return build_base(tmp_path_factory.mktemp("guard") / "base", mtlrec)


@pytest.fixture
def work(base, tmp_path) -> Path:
    root = tmp_path / "w"
    shutil.copytree(base, root)
    return root


def digest(path: Path) -> dict[str, str]:
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return {str(f): hashlib.sha256(f.read_bytes()).hexdigest() for f in files}


def refused(out, case: str, **placeholders: str) -> None:
    """Exit 1 (2 for an override), one line on stderr, the doc row's line."""
    lines = out.stderr.splitlines()
    assert out.returncode in (1, 2) and len(lines) == 1, out.stderr
    assert re_match(_doc_line(case), lines[0], placeholders), (lines[0], _doc_line(case))


def re_match(doc: str, line: str, placeholders: dict[str, str]) -> bool:
    import re

    return re.fullmatch(_as_pattern(doc, **placeholders), line) is not None


PREDICT = ["predict", "run", "--input", "data/tiny/test.parquet"]


def test_no_output_lands_in_a_run_dir_or_a_dataset_whatever_the_flag(work):
    before = {**digest(work / "run"), **digest(work / "data/tiny")}
    run, data = str(work / "run"), str(work / "data/tiny")
    out = mtlrec([*PREDICT, "--output", f"{run}/checkpoints/best.pt", "--overwrite"], work)
    refused(out, "predict onto a run's file", RUN=run)
    out = mtlrec([*PREDICT, "--output", f"{data}/scores.parquet"], work)
    refused(out, "predict into a prepared dataset", DATA=data)
    out = mtlrec(["compare", "run", "--output", f"{run}/metrics.json"], work)
    refused(out, "compare onto a run's file", W=".", RUN=run)
    out = mtlrec(["compare", "run", "--plot", f"{run}/plots"], work)
    refused(out, "compare --plot into a run dir", RUN=run)
    out = mtlrec(["export", "run", "--format", "torchscript", "--output", "run"], work)
    refused(out, "export onto the run dir", RUN="run")
    assert {**digest(work / "run"), **digest(work / "data/tiny")} == before
    assert not (work / "data/tiny/scores.parquet").exists()


def test_compare_output_replaces_a_file_only_with_overwrite(work):
    (work / "t.md").write_text("mine\n")
    out = mtlrec(["compare", "run", "--output", str(work / "t.md"), "--format", "csv"], work)
    refused(out, "compare onto an existing file", W=str(work))
    assert (work / "t.md").read_text() == "mine\n"
    out = mtlrec(["compare", "run", "--output", "t.md", "--format", "csv", "--overwrite"], work)
    assert out.returncode == 0, out.stderr
    assert (work / "t.md").read_text().startswith("run,")


def test_export_refuses_a_dir_of_other_files_and_writes_its_own_again(work):
    before = digest(work / "raw")
    out = mtlrec(["export", "run", "--format", "torchscript", "--output", "raw"], work)
    refused(out, "export into a dir of other files", RAW="raw")
    assert digest(work / "raw") == before
    for _ in range(2):  # the default RUN/export, then again over it (an export replaces itself)
        out = mtlrec(["export", "run", "--format", "torchscript", "--sample-rows", "64"], work)
        assert out.returncode == 0, out.stderr
    assert sorted(p.name for p in (work / "run/export").iterdir()) == [
        "encoders.json",
        "export.json",
        "model.pt",
        "spec.json",
        "vocab.parquet",
    ]
    assert [p.name for p in (work / "run").glob(".export*")] == []


def test_a_full_disk_or_a_read_only_dir_is_one_line_and_leaves_nothing(work):
    w = str(work)
    out = mtlrec([*PREDICT, "--output", f"{w}/p.parquet"], work, {"MTLREC_FAULT_NO_SPACE": "p.parquet"})  # fmt: skip
    refused(out, "any writer on a full disk", W=w)
    (work / "ro").mkdir()
    args = ["export", "run", "--format", "torchscript", "--output", f"{w}/ro/ex"]
    out = mtlrec(args, work, {"MTLREC_FAULT_READ_ONLY": "ro"})
    refused(out, "any writer in a read-only dir", W=w)
    before = digest(work / "run")
    args = ["export", "run", "--format", "torchscript", "--sample-rows", "64"]
    out = mtlrec(args, work, {"MTLREC_FAULT_NO_SPACE": "model.pt"})  # torch.jit.save's file
    assert out.returncode == 1 and "run/export: cannot write it: No space left" in out.stderr
    assert digest(work / "run") == before and not (work / "run/export").exists()
    out = mtlrec(["compare", "run", "--plot", "plots"], work, {"MTLREC_FAULT_NO_SPACE": "learning_curves.png"})  # fmt: skip
    assert out.returncode == 1 and "plots/learning_curves.png: cannot write it" in out.stderr
    assert sorted(p.name for p in work.iterdir() if p.name.startswith((".", "p"))) == ["preds.parquet"]  # fmt: skip
    assert list(work.rglob("*.tmp*")) == [] and not (work / "ro/ex").exists()


PREPARE = ["prepare", "--config-dir", "conf", "dataset=rawcase", "overwrite=true"]


def test_prepare_overwrite_replaces_only_a_dataset_mtlrec_made(work):
    before = {**digest(work / "raw2"), **digest(work / "run"), **digest(work / "data/tiny")}
    out = mtlrec([*PREPARE, "dataset.path=raw2"], work)
    refused(out, "prepare overwrite=true onto the raw dir", RAW="raw2")
    out = mtlrec([*PREPARE, "dataset.path=."], work)
    refused(out, "prepare overwrite=true onto the current dir or a parent")
    out = mtlrec([*PREPARE, "dataset.path=run"], work)
    refused(out, "prepare overwrite=true onto a dir that is no dataset", RUN="run")
    (work / "data/tiny/notes.txt").write_text("mine")
    out = mtlrec([*PREPARE, "dataset.path=data/tiny"], work)
    refused(out, "prepare overwrite=true onto a dataset holding a user's file", DATA="data/tiny")
    (work / "data/tiny/notes.txt").unlink()
    assert {**digest(work / "raw2"), **digest(work / "run"), **digest(work / "data/tiny")} == before
    out = mtlrec([*PREPARE, "dataset.path=data/tiny"], work)  # a dataset mtlrec made: replaced
    assert out.returncode == 0, out.stderr
    assert json.loads((work / "data/tiny/spec.json").read_text())["name"] == "rawcase"
    assert sorted(p.name for p in (work / "data").iterdir()) == ["tiny"]


def _set_cell(path: Path, line: int, column: str, value: str) -> None:
    rows = path.read_text().splitlines()
    col = rows[0].split(",").index(column)
    cells = rows[line - 1].split(",")
    cells[col] = value
    rows[line - 1] = ",".join(cells)
    path.write_text("\n".join(rows) + "\n")


def test_a_dense_value_beyond_float32_is_one_line_or_the_chosen_policy(work):
    _set_cell(work / "raw2/train.csv", 3, "price", "1e308")
    prepare = ["prepare", "--config-dir", "conf", "dataset=rawcase"]
    out = mtlrec(prepare, work)
    refused(out, "a dense value that is not a finite float32", RAW="raw2")
    assert not (work / "data/rawcase").exists()
    raw = [float(r.split(",")[3]) for r in (work / "raw2/train.csv").read_text().splitlines()[1:]]
    for policy in ("clip", "impute"):
        out = mtlrec([*prepare, f"+dataset.dense_nonfinite={policy}", "overwrite=true"], work)
        assert out.returncode == 0, out.stderr
        price = pq.read_table(work / "data/rawcase/train.parquet").column("price").to_pylist()
        assert all(math.isfinite(v) for v in price)
        info = json.loads((work / "data/rawcase/spec.json").read_text())["info"]["dense"]["price"]
        # the standardized value of what the 1e308 became: float32's max, or the fill value 0
        became = 3.4028234663852886e38 if policy == "clip" else 0.0
        assert price[1] == pytest.approx((became - info["mean"]) / info["std"], rel=1e-6)
        assert price[0] == pytest.approx((raw[0] - info["mean"]) / info["std"], rel=1e-5)


def test_unused_raw_columns_are_listed_in_the_summary_and_spec(work):
    for split in ("train", "val", "test"):
        path = work / "raw2" / f"{split}.csv"
        rows = path.read_text().splitlines()
        rows = [rows[0] + ",timestamp"] + [r + f",{i}" for i, r in enumerate(rows[1:])]
        path.write_text("\n".join(rows) + "\n")
    out = mtlrec(["prepare", "--config-dir", "conf", "dataset=rawcase"], work)
    assert out.returncode == 0, out.stderr
    assert "unused raw columns (not in the dataset config, not prepared): timestamp\n" in out.stdout
    spec = json.loads((work / "data/rawcase/spec.json").read_text())
    assert spec["info"]["unused_columns"] == ["timestamp"]


def test_an_unquoted_value_and_a_long_csv_header_say_what_to_set(work):
    out = mtlrec(["train", "hydra.run.dir=/tmp/ü n"], work)
    refused(out, "an unquoted value with spaces or non-ASCII letters")
    assert out.returncode == 2
    for split in ("train", "val", "test"):
        path = work / "raw2" / f"{split}.csv"
        rows = path.read_text().splitlines()
        rows = [rows[0] + "," + "c" * 325] + [r + ",0" for r in rows[1:]]
        path.write_text("\n".join(rows) + "\n")
    out = mtlrec(["prepare", "--config-dir", "conf", "dataset=rawcase", "+dataset.block_size_mb=0.0001"], work)  # fmt: skip
    refused(out, "a CSV header longer than one read block", RAW="raw2")
    assert not (work / "data/rawcase").exists()
