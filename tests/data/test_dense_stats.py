"""Dense standardization statistics: merged block by block without cancellation."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mtlrec.data.prepare import DenseStats, Moments, row_uniforms
from mtlrec.data.sources import prepare_dataset
from mtlrec.data.spec import DatasetSpec


def test_a_large_offset_column_keeps_its_std_over_100_blocks():
    rng = np.random.default_rng(0)
    x = 1.7e9 + rng.uniform(0.0, 10.0, size=1_000_000)
    m = Moments()
    for block in np.array_split(x, 100):
        m.add(block)
    mean, std = m.mean_std()
    assert m.n == 1_000_000
    assert mean == pytest.approx(float(np.mean(x)), rel=1e-9)
    assert std == pytest.approx(float(np.std(x)), rel=1e-9)
    assert std == pytest.approx(10 / np.sqrt(12), rel=1e-2)  # U(0, 10): 2.887
    # What sum / sum-of-squares gives on the same blocks (the old code): far off.
    s = sum(float(b.sum()) for b in np.array_split(x, 100))
    s2 = sum(float(np.square(b).sum()) for b in np.array_split(x, 100))
    naive = np.sqrt(max(s2 / len(x) - (s / len(x)) ** 2, 0.0))
    assert abs(naive - np.std(x)) > 1.0


def test_merge_does_not_depend_on_block_sizes():
    rng = np.random.default_rng(1)
    x = rng.lognormal(3.0, 2.0, size=10_001)
    ref = DenseStats()
    ref.add(x, with_log=True)
    blocks = DenseStats()
    for b in np.split(x, [1, 7, 500, 9_000]):
        blocks.add(b, with_log=True)
    for t in ("standardize", "log1p_standardize", "minmax"):
        for k, v in ref.params(t).items():
            assert blocks.params(t)[k] == pytest.approx(v, rel=1e-12)
    assert ref.params("log1p_standardize")["std"] == pytest.approx(np.std(np.log1p(x)), rel=1e-12)


def test_prepare_standardizes_a_large_offset_column_exactly(tmp_path):
    rng = np.random.default_rng(2)
    n = 30_000
    df = pd.DataFrame(
        {
            "ts": 1.7e9 + rng.uniform(0, 10, size=n),
            "item": rng.integers(0, 5, size=n),
            "click": rng.integers(0, 2, size=n),
        }
    )
    raw = tmp_path / "raw"
    raw.mkdir()
    df.to_csv(raw / "all.csv", index=False, float_format="%.6f")
    cfg = {
        "name": "offset",
        "preparer": "csv",
        "path": str(tmp_path / "out"),
        "raw_dir": str(raw),
        "files": ["all.csv"],
        "split": {"by": "random", "fractions": {"train": 0.98, "val": 0.01, "test": 0.01}},
        "sparse": ["item"],
        "dense": ["ts"],
        "targets": {"ctr": {"label": "click"}},
        "block_size_mb": 0.05,  # many blocks
    }
    prepare_dataset(cfg)
    spec = DatasetSpec.load(tmp_path / "out")
    train = pd.read_parquet(tmp_path / "out" / "train.parquet")
    # The train rows' raw values, as parsed from the CSV, in the order they were written.
    raw_values = pd.read_csv(raw / "all.csv")["ts"].to_numpy()
    u = row_uniforms(0, 0, 0, n)
    x = raw_values[u < 0.98]
    p = spec.info["dense"]["ts"]
    assert p["mean"] == pytest.approx(np.mean(x), rel=1e-12)
    assert p["std"] == pytest.approx(np.std(x), rel=1e-9)
    assert float(train["ts"].std(ddof=0)) == pytest.approx(1.0, abs=1e-4)
