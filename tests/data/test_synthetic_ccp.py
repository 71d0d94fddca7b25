"""The embedded dataset: stated rates, invariants, determinism, caching."""

import numpy as np
import pytest

from mtlrec.data import synthetic_ccp
from mtlrec.data.spec import DatasetSpec
from mtlrec.errors import MtlrecError


@pytest.fixture(scope="module")
def columns():
    return synthetic_ccp.generate(60_000, seed=0)


def test_rates_are_as_documented(columns):
    click, conversion = columns["click"], columns["conversion"]
    assert 0.03 <= click.mean() <= 0.06
    cvr_among_clicks = conversion[click == 1].mean()
    assert 0.05 <= cvr_among_clicks <= 0.15
    # the generator calibrates the true probabilities exactly
    assert columns["p_click"].mean() == pytest.approx(0.045, rel=1e-3)


def test_no_conversion_without_click(columns):
    assert not ((columns["conversion"] == 1) & (columns["click"] == 0)).any()
    np.testing.assert_array_equal(
        columns["conversion"], columns["click"] * columns["conversion_if_clicked"]
    )
    np.testing.assert_allclose(columns["p_ctcvr"], columns["p_click"] * columns["p_cvr"], rtol=1e-6)


def test_sample_selection_effect(columns):
    """Clicked impressions are a biased sample: their true CVR is higher than that of all impressions,
    and click and conversion propensities are correlated but far from identical."""
    clicked = columns["click"] == 1
    assert columns["p_cvr"][clicked].mean() > 1.3 * columns["p_cvr"].mean()
    r = np.corrcoef(np.log(columns["p_click"]), np.log(columns["p_cvr"]))[0, 1]
    assert 0.2 < r < 0.9


def test_zipf_like_ids(columns):
    counts = np.sort(np.bincount(columns["item_id"], minlength=10_000))[::-1]
    assert counts[0] > 50 * np.median(counts[counts > 0])  # a heavy head
    assert columns["item_id"].max() < 10_000 and columns["user_id"].max() < 20_000


def test_same_seed_same_data_other_seed_other_data():
    a, b, c = (synthetic_ccp.generate(2000, seed=s) for s in (5, 5, 6))
    for name in a:
        np.testing.assert_array_equal(a[name], b[name])
    assert not np.array_equal(a["p_click"], c["p_click"])


def test_ensure_prepared_writes_once_and_reuses(tmp_path):
    path = tmp_path / "ccp"
    assert synthetic_ccp.ensure_prepared(path, 3000, seed=1) == path
    spec = DatasetSpec.load(path)
    assert sorted(p.name for p in path.iterdir()) == [
        "spec.json",
        "test.parquet",
        "train.parquet",
        "val.parquet",
    ]
    assert spec.funnel.conversion_if_clicked == "conversion_if_clicked"
    assert [t.name for t in spec.tasks] == ["ctr", "cvr"] and spec.tasks[1].where == "click"
    mtime = (path / "train.parquet").stat().st_mtime_ns
    synthetic_ccp.ensure_prepared(path, 3000, seed=1)
    assert (path / "train.parquet").stat().st_mtime_ns == mtime
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dirs left


def test_split_sizes(tmp_path):
    import pyarrow.parquet as pq

    path = synthetic_ccp.ensure_prepared(tmp_path / "ccp", 1000, seed=2)
    rows = {s: pq.read_metadata(path / f"{s}.parquet").num_rows for s in ("train", "val", "test")}
    assert rows == {"train": 700, "val": 150, "test": 150}


def test_incomplete_dir_is_refused(tmp_path):
    (tmp_path / "ccp").mkdir()
    with pytest.raises(MtlrecError, match="holds no spec.json"):
        synthetic_ccp.ensure_prepared(tmp_path / "ccp", 1000, seed=0)


def test_other_generator_version_is_refused(tmp_path, monkeypatch):
    path = synthetic_ccp.ensure_prepared(tmp_path / "ccp", 1000, seed=0)
    monkeypatch.setattr(synthetic_ccp, "GENERATOR_VERSION", 99)
    with pytest.raises(MtlrecError, match="generator version 2, this mtlrec makes version 99"):
        synthetic_ccp.ensure_prepared(path, 1000, seed=0)
