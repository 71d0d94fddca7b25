"""mmoe_synthetic: the MMoE paper's generator (task relation set by p), cached on first use."""

from __future__ import annotations

import numpy as np
import pytest

from helpers.datagen import prepare, train
from mtlrec.data.sources import resolve_dataset_dir
from mtlrec.data.sources.mmoe_synthetic import NUM_SINES_M, SCALE_C, generate, task_weights
from mtlrec.data.spec import DatasetSpec
from mtlrec.errors import MtlrecError


def test_label_correlation_grows_with_p_and_is_about_1_at_p_1():
    corr = []
    for p in (0.0, 0.25, 0.5, 0.75, 0.9, 1.0):
        _, y1, y2 = generate(20_000, 100, p, seed=0)
        corr.append(np.corrcoef(y1, y2)[0, 1])
    assert all(b > a for a, b in zip(corr, corr[1:], strict=False)), corr
    assert abs(corr[0]) < 0.05 and corr[-1] > 0.98, corr


def test_task_weights_have_cosine_p_and_only_p_changes_between_datasets():
    for p in (-0.3, 0.0, 0.7, 1.0):
        w1, w2 = task_weights(50, p, seed=1)
        assert np.isclose(np.linalg.norm(w1), SCALE_C) and np.isclose(np.linalg.norm(w2), SCALE_C)
        assert np.isclose(w1 @ w2 / SCALE_C**2, p)
    x_a, y1_a, y2_a = generate(500, 20, 0.5, seed=3)
    x_b, y1_b, y2_b = generate(500, 20, 0.9, seed=3)
    assert np.array_equal(x_a, x_b) and np.array_equal(y1_a, y1_b)  # same x, w1, a_i, b_i, noise
    assert not np.array_equal(y2_a, y2_b)
    x_c, y1_c, _ = generate(500, 20, 0.5, seed=3)
    assert np.array_equal(x_a, x_c) and np.array_equal(y1_a, y1_c)
    assert NUM_SINES_M == 10


def test_generated_on_first_use_and_trains_two_regression_tasks(tmp_path):
    over = [
        f"data_dir={tmp_path}",
        "dataset=mmoe_synthetic",
        "dataset.num_rows=1000",
        "dataset.input_dim=8",
        "dataset.correlation=0.8",
        "model=mmoe",
        "trainer.epochs=1",
    ]
    metrics = train(tmp_path / "run", over)
    path = tmp_path / "mmoe_synthetic-d8-p0.8-n1000-s0"
    spec = DatasetSpec.load(path)
    assert [(t.name, t.label, t.type) for t in spec.tasks] == [
        ("task1", "y1", "regression"),
        ("task2", "y2", "regression"),
    ]
    assert len(spec.dense) == 8 and not spec.sparse and spec.info["correlation"] == 0.8
    assert metrics["metrics"]["test/task1_mse"] > 0 and "test/task2_mae" in metrics["metrics"]
    mtime = (path / "spec.json").stat().st_mtime_ns
    cfg = {
        "name": "mmoe_synthetic",
        "path": str(path),
        "num_rows": 1000,
        "input_dim": 8,
        "correlation": 0.8,
        "generator_seed": 0,
    }
    assert resolve_dataset_dir(cfg) == path and (path / "spec.json").stat().st_mtime_ns == mtime


def test_prepare_command_generates_it_and_bad_p_is_one_line(tmp_path):
    result = prepare([f"data_dir={tmp_path}", "dataset=mmoe_synthetic", "dataset.num_rows=200"])
    assert {s: result.summary[s].rows for s in ("train", "val", "test")} == {
        "train": 160,
        "val": 20,
        "test": 20,
    }
    with pytest.raises(MtlrecError) as e:
        prepare([f"data_dir={tmp_path}", "dataset=mmoe_synthetic", "dataset.correlation=1.5"])
    assert str(e.value) == "dataset.correlation must be in [-1, 1], got 1.5"


def test_chunked_generation_equals_drawing_everything_at_once(tmp_path, monkeypatch):
    """One chunk holding every row is the one-go draw (x, then eps_1, then eps_2); any chunk size
    gives the same rows and the same split files."""
    import pandas as pd

    from mtlrec.data.sources import mmoe_synthetic

    monkeypatch.setattr(mmoe_synthetic, "CHUNK_ROWS", 10**9)
    whole = mmoe_synthetic.generate(1000, 6, 0.3, 7)
    (tmp_path / "a").mkdir()
    mmoe_synthetic.write_prepared(tmp_path / "a", "m", 1000, 6, 0.3, 7)
    monkeypatch.setattr(mmoe_synthetic, "CHUNK_ROWS", 97)
    chunked = mmoe_synthetic.generate(1000, 6, 0.3, 7)
    for a, b in zip(whole, chunked, strict=True):
        np.testing.assert_array_equal(a, b)
    (tmp_path / "b").mkdir()
    mmoe_synthetic.write_prepared(tmp_path / "b", "m", 1000, 6, 0.3, 7)
    for split in ("train", "val", "test"):
        pd.testing.assert_frame_equal(
            pd.read_parquet(tmp_path / "a" / f"{split}.parquet"),
            pd.read_parquet(tmp_path / "b" / f"{split}.parquet"),
        )
    assert len(pd.read_parquet(tmp_path / "b" / "val.parquet")) == 100
