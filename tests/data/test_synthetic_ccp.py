"""The embedded dataset: stated rates, invariants, determinism, caching."""

import numpy as np
import pytest

from mtlrec.data import ccp_generator
from mtlrec.data.sources import synthetic_ccp
from mtlrec.data.spec import DatasetSpec
from mtlrec.errors import MtlrecError


@pytest.fixture(scope="module")
def columns():
    return ccp_generator.generate(60_000, seed=0)


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
    a, b, c = (ccp_generator.generate(2000, seed=s) for s in (5, 5, 6))
    for name in a:
        np.testing.assert_array_equal(a[name], b[name])
    assert not np.array_equal(a["p_click"], c["p_click"])


def test_ensure_prepared_writes_once_and_reuses(tmp_path):
    path = tmp_path / "ccp"
    assert synthetic_ccp.ensure_prepared(path, 3000, seed=1) == path
    spec = DatasetSpec.load(path)
    assert sorted(p.name for p in path.iterdir()) == [
        "checksums.json",
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
    with pytest.raises(MtlrecError, match="generator version 3, this mtlrec makes version 99"):
        synthetic_ccp.ensure_prepared(path, 1000, seed=0)


def _formula(name: str) -> str:
    """The docstring's text of one logit's formula (up to the next formula line)."""
    import re

    m = re.search(rf"\n    {name}\s+=(.*?)\n    (?:p_click|cvr_logit)", ccp_generator.__doc__, re.S)
    return " ".join(m.group(1).split())


@pytest.mark.parametrize(
    ("logit", "terms"),
    [("click_logit", ccp_generator.CLICK_TERMS), ("cvr_logit", ccp_generator.CVR_TERMS)],
)
def test_docstring_formula_is_the_code(logit, terms):
    text = _formula(logit)
    for column, coef in terms.items():
        assert f"{'-' if coef < 0 else '+'} {abs(coef):g} {column}" in text, (column, text)
    # and nothing explicit the code does not have
    assert text.count(" - ") + text.count(" + ") == len(terms) + 2  # + the effects and latent sums


def test_price_lowers_both_logits_by_the_stated_amounts():
    """Counterfactual: the same rows with every item's price 1 std higher."""
    tables = ccp_generator.draw_tables(0)
    _, click, cvr, _ = ccp_generator.chunk_features(tables, 0, 0, 5000)
    tables.dense["item_price"] = tables.dense["item_price"] + 1.0
    _, click_up, cvr_up, _ = ccp_generator.chunk_features(tables, 0, 0, 5000)
    np.testing.assert_allclose(click_up - click, -0.2, atol=1e-6)
    np.testing.assert_allclose(cvr_up - cvr, -0.6, atol=1e-6)


def test_item_price_follows_item_price_level():
    tables = ccp_generator.draw_tables(0)
    level = tables.attributes["item_price_level"]
    price = tables.dense["item_price"]
    assert np.corrcoef(np.log1p(level), price)[0, 1] > 0.9
    means = [price[level == v].mean() for v in range(10)]
    assert means == sorted(means)


def test_chunked_generation_is_deterministic_and_splits_exactly(tmp_path, monkeypatch):
    monkeypatch.setattr(ccp_generator, "CHUNK_ROWS", 1000)
    monkeypatch.setattr(ccp_generator, "CALIBRATION_ROWS", 4000)
    n = 10_500
    cols = ccp_generator.generate(n, seed=4)
    assert len(cols["click"]) == n
    assert cols["p_click"][:4000].mean() == pytest.approx(0.045, rel=1e-3)  # calibration rows
    # A full chunk's features depend on (seed, chunk) only, not on how many rows follow.
    other = ccp_generator.generate(3000, seed=4)
    for name in ("user_id", "item_id", "position", "item_price"):
        np.testing.assert_array_equal(other[name], cols[name][:3000])
    import pyarrow.parquet as pq

    ccp_generator.write_prepared(tmp_path, n, seed=4)
    parts = {
        s: pq.read_table(tmp_path / f"{s}.parquet").to_pandas() for s in ("train", "val", "test")
    }
    assert {s: len(t) for s, t in parts.items()} == {"train": 7350, "val": 1575, "test": 1575}
    assert pq.ParquetFile(tmp_path / "train.parquet").metadata.num_row_groups == 11  # one per chunk
    # Every generated row lands in exactly one split, in generated order.
    written = np.sort(np.concatenate([t.p_click.to_numpy() for t in parts.values()]))
    np.testing.assert_array_equal(written, np.sort(cols["p_click"]))


def test_sequential_split_sizes_are_exact_and_unbiased():
    from mtlrec.data.generated import SequentialSplit

    hits = np.zeros(3000)
    for seed in range(200):
        splitter = SequentialSplit((2100, 450, 450), np.random.default_rng(seed))
        codes = np.concatenate([splitter.codes(k) for k in (1000, 1000, 999, 1)])
        assert np.bincount(codes, minlength=3).tolist() == [2100, 450, 450]
        hits += codes == 0
    # every row is train with probability 0.7, wherever it sits (200 draws: sd 0.032)
    assert abs(hits[:1000].mean() / 200 - 0.7) < 0.01 and abs(hits[2000:].mean() / 200 - 0.7) < 0.01


ACTION = ccp_generator.Setting(action_rate=0.3)


@pytest.fixture(scope="module")
def with_action():
    return ccp_generator.generate(60_000, seed=0, setting=ACTION)


def test_action_stage_adds_columns_and_changes_nothing_else(columns, with_action):
    assert set(with_action) - set(columns) == {"action", "p_action"}
    for name in columns:  # its own random stream: every other column is the default data's
        np.testing.assert_array_equal(with_action[name], columns[name], err_msg=name)


def test_action_stage_rates_and_the_esm2_premise(with_action):
    c = with_action
    clicked, bought = c["click"] == 1, c["conversion"] == 1
    assert not ((c["action"] == 1) & ~clicked).any()  # no cart or wish without a click
    # calibrated: mean true p(action | click) over clicks = action_rate (within sampling error)
    weights = c["p_click"].astype(np.float64)
    assert (weights * c["p_action"]).sum() / weights.sum() == pytest.approx(0.3, abs=1e-3)
    assert 0.27 <= c["action"][clicked].mean() <= 0.33
    # buyers cart or wish far more often: most purchases go through the D-action
    assert c["action"][bought].mean() > 0.85 > 0.3 > c["action"][clicked & ~bought].mean()


def test_action_probability_path_sum_is_p_cvr():
    """p(D|click) p(buy|D) + (1 - p(D|click)) p(buy|O) = p_cvr, from the stated formulas."""
    cvr_logit = np.array([-3.0, 0.0, 2.0])
    p_cvr = 1 / (1 + np.exp(-(cvr_logit - 1.0)))
    p_action, if_buy, if_not = ccp_generator.action_probability(cvr_logit, p_cvr, -1.0)
    s = lambda x: 1 / (1 + np.exp(-x))  # noqa: E731
    np.testing.assert_allclose(if_buy, s(-1.0 + 0.5 * cvr_logit + 3.0))
    np.testing.assert_allclose(if_not, s(-1.0 + 0.5 * cvr_logit))
    buy_if_d = p_cvr * if_buy / p_action
    buy_if_o = p_cvr * (1 - if_buy) / (1 - p_action)
    np.testing.assert_allclose(p_action * buy_if_d + (1 - p_action) * buy_if_o, p_cvr)


def test_weak_setting_decorrelates_and_converts_more(columns):
    weak = ccp_generator.generate(
        60_000, seed=0, setting=ccp_generator.Setting(cvr_rate=0.4, effect_correlation=0.2)
    )
    p_click, p_cvr = weak["p_click"].astype(np.float64), weak["p_cvr"].astype(np.float64)
    assert (p_click * p_cvr).sum() / p_click.sum() == pytest.approx(0.4, abs=1e-3)
    r_weak = np.corrcoef(np.log(p_click), np.log(p_cvr))[0, 1]
    r_default = np.corrcoef(np.log(columns["p_click"]), np.log(columns["p_cvr"]))[0, 1]
    assert r_weak < 0.35 < 0.6 < r_default
    np.testing.assert_array_equal(weak["click"], columns["click"])  # clicks are untouched


def test_presets_have_their_own_cache_dirs_and_mismatches_are_refused(tmp_path):
    from conftest import compose_train
    from mtlrec.data.sources import resolve_dataset_dir

    def dataset(*overrides):
        cfg = compose_train([*overrides, f"data_dir={tmp_path}", "dataset.num_rows=1000"])
        return dict(cfg.dataset)

    default = resolve_dataset_dir(dataset())
    assert default == tmp_path / "synthetic_ccp-v3-n1000-s0"
    spec = DatasetSpec.load(default)
    assert spec.funnel.action is None and "action_rate" not in spec.info
    assert spec.labels == ("click", "conversion", "conversion_if_clicked")
    action = resolve_dataset_dir(dataset("dataset=synthetic_ccp_action"))
    assert action == tmp_path / "synthetic_ccp-v3-action0.3-n1000-s0"
    spec = DatasetSpec.load(action)
    assert spec.funnel.action == "action" and spec.labels[-1] == "action"
    assert spec.info["action_rate"] == 0.3 and "cvr_rate" not in spec.info
    weak = resolve_dataset_dir(dataset("dataset=synthetic_ccp_weak"))
    assert weak == tmp_path / "synthetic_ccp-v3-cvr0.4-r0.2-n1000-s0"
    assert DatasetSpec.load(weak).info["effect_correlation"] == 0.2
    with pytest.raises(MtlrecError) as e:  # the default dir never holds other data
        resolve_dataset_dir(dataset("dataset.action_rate=0.3"))
    assert str(e.value) == (
        "dataset.action_rate=0.3 generates other data than the default synthetic_ccp, but "
        f"dataset.path is the default data's dir ({default}); use dataset=synthetic_ccp_action or "
        "dataset=synthetic_ccp_weak (their own dirs) or set dataset.path"
    )
    with pytest.raises(MtlrecError) as e:  # a cached dir made with other options
        synthetic_ccp.ensure_prepared(action, 1000, 0, ccp_generator.Setting(action_rate=0.5))
    assert str(e.value) == (
        f"{action}: holds synthetic_ccp generated with options {{'action_rate': 0.3}}, not "
        "{'action_rate': 0.5}; set dataset.path to another directory"
    )
    with pytest.raises(MtlrecError) as e:
        resolve_dataset_dir(dataset("dataset=synthetic_ccp_action", "dataset.action_rate=1.5"))
    assert str(e.value) == (
        "dataset.action_rate must be in (0, 1) or null (no cart/wish stage), got 1.5"
    )
