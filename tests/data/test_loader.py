"""Prepared parquet -> tensors: offsets, dtypes, and validation errors naming file and column."""

import numpy as np
import pandas as pd
import pytest
import torch

from mtlrec.data.loader import load_split
from mtlrec.data.spec import DatasetSpec, FeatureSpec, TaskSpec
from mtlrec.errors import MtlrecError

SPEC = DatasetSpec(
    name="toy",
    features=(
        FeatureSpec("u", "sparse", 4),
        FeatureSpec("i", "sparse", 3, oov_id=0),
        FeatureSpec("x", "dense"),
    ),
    labels=("click", "score"),
    tasks=(TaskSpec("ctr", "click"), TaskSpec("score", "score", "regression")),
)


def frame(**changes):
    df = pd.DataFrame(
        {
            "u": [0, 3, 1],
            "i": [2, 1, 0],
            "x": [0.5, -1.0, 2.0],
            "click": [0, 1, 1],
            "score": [1.5, 0.0, 3.0],
        }
    )
    for k, v in changes.items():
        df[k] = v
    return df


def load(tmp_path, df, spec=SPEC):
    path = tmp_path / "split.parquet"
    df.to_parquet(path)
    return load_split(path, spec, spec.tasks), path


def test_loads_contiguous_tensors_with_fused_ids(tmp_path):
    split, _ = load(tmp_path, frame())
    assert (
        split.sparse.dtype == torch.int64
        and split.dense.dtype == torch.float32
        and split.labels.dtype == torch.float32
    )
    assert split.sparse.tolist() == [
        [0, 4 + 2],
        [3, 4 + 1],
        [1, 4 + 0],
    ]  # field i is offset by u's vocab (4)
    assert split.dense[:, 0].tolist() == [0.5, -1.0, 2.0]
    assert split.labels.tolist() == [[0, 1.5], [1, 0.0], [1, 3.0]]
    batch = split.take(torch.tensor([2, 0]))
    assert batch.labels[:, 1].tolist() == [3.0, 1.5] and len(batch) == 2


def test_ids_beyond_vocab_map_to_oov_when_the_spec_has_one(tmp_path, caplog):
    split, _ = load(tmp_path, frame(i=[2, 7, 3]))
    assert split.sparse[:, 1].tolist() == [4 + 2, 4 + 0, 4 + 0]
    assert "2 ids beyond the vocabulary mapped to oov id 0" in caplog.text


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            {"u": [0, 4, 9]},
            "sparse column 'u' has 2 ids >= vocab_size 4 (max 9) and no oov_id in the spec",
        ),
        ({"u": [0, -1, 1]}, "sparse column 'u' has 1 negative ids (min -1); ids must be >= 0"),
        ({"x": [0.1, np.nan, 0.3]}, "dense column 'x' has 1 NaN/inf/missing values"),
        ({"x": [0.1, np.inf, 0.3]}, "dense column 'x' has 1 NaN/inf/missing values"),
        ({"score": [0.1, np.nan, 0.3]}, "label column 'score' has 1 NaN/inf/missing values"),
        (
            {"click": [0, 2, 1]},
            "label column 'click' of a binary task has 1 values outside {0,1} (e.g. 2)",
        ),
        ({"u": [0.5, 1.0, 2.0]}, "sparse column 'u' has type double; it must hold integer ids"),
        ({"x": ["a", "b", "c"]}, "dense column 'x' has type"),
    ],
)
def test_bad_values_fail_with_one_line_naming_file_and_column(tmp_path, changes, message):
    with pytest.raises(MtlrecError) as err:
        load(tmp_path, frame(**changes))
    text = str(err.value)
    assert message in text and "split.parquet" in text and "\n" not in text


def test_missing_column_is_named(tmp_path):
    with pytest.raises(
        MtlrecError, match=r"missing column\(s\) \['x'\] required by the dataset spec"
    ):
        load(tmp_path, frame().drop(columns=["x"]))


def test_empty_split_and_missing_file(tmp_path):
    with pytest.raises(MtlrecError, match="the split is empty"):
        load(tmp_path, frame().iloc[:0])
    with pytest.raises(MtlrecError, match="split file not found"):
        load_split(tmp_path / "nope.parquet", SPEC)
    (tmp_path / "junk.parquet").write_text("not parquet")
    with pytest.raises(MtlrecError, match="not a readable parquet file"):
        load_split(tmp_path / "junk.parquet", SPEC)


def test_spec_round_trip_and_validation(tmp_path):
    SPEC.save(tmp_path)
    assert DatasetSpec.load(tmp_path) == SPEC
    with pytest.raises(
        MtlrecError, match=r"column\(s\) \['click'\] are both a feature and a label"
    ):
        DatasetSpec("bad", (FeatureSpec("click", "sparse", 2),), ("click",), ()).validate()
    with pytest.raises(MtlrecError, match="task 'ctr' label 'clk' is not among labels"):
        DatasetSpec("bad", SPEC.features, SPEC.labels, (TaskSpec("ctr", "clk"),)).validate()
    with pytest.raises(MtlrecError, match=r"unknown task\(s\) \['nope'\]"):
        SPEC.select_tasks(["ctr", "nope"])
    assert [t.name for t in SPEC.select_tasks(["score"])] == ["score"]


def test_loading_a_split_needs_no_pyarrow_dataset(tmp_path):
    """Start-up (docs/performance.md): one split file is read without pyarrow.dataset, whose
    import alone costs ~0.4 s of CPU in every training run."""
    import subprocess
    import sys
    from pathlib import Path

    frame().to_parquet(tmp_path / "split.parquet")
    code = (
        "import sys; from pathlib import Path; from mtlrec.data.loader import load_split; "
        "from tests.data.test_loader import SPEC; "
        f"s = load_split(Path({str(tmp_path / 'split.parquet')!r}), SPEC, SPEC.tasks); "
        "print(len(s), 'pyarrow.dataset' in sys.modules)"
    )
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=root
    )
    assert out.stdout.split() == ["3", "False"]
