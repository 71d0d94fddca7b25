"""`mtlrec compare --baseline`: the deltas and negative-transfer marks against a hand computation,
on hand-written run dirs (tests/helpers/runs.py)."""

from __future__ import annotations

import json

import pytest

from helpers.runs import assert_real_png, base_config, write_run
from mtlrec.ranking.gain import Delta
from mtlrec.ranking.seesaw import pareto_front

# model -> seed -> (test/ctr_auc, test/cvr_auc, test/ctr_logloss)
VALUES = {
    "single_task": {1: (0.70, 0.80, 0.50), 2: (0.71, 0.81, 0.49), 3: (0.69, 0.79, 0.51)},
    "mmoe": {1: (0.71, 0.78, 0.48), 2: (0.722, 0.785, 0.48), 3: (0.701, 0.775, 0.50)},
    "esmm": {1: (0.70, 0.799, 0.52), 2: (0.71, 0.812, 0.47)},
}


@pytest.fixture
def sweep(tmp_path):
    n = 0
    for model, seeds in VALUES.items():
        for seed, (ctr, cvr, loss) in seeds.items():
            metrics = {"test/ctr_auc": ctr, "test/cvr_auc": cvr, "test/ctr_logloss": loss}
            write_run(tmp_path / str(n), base_config(model__name=model, seed=seed), metrics)
            n += 1
    return tmp_path


def compare(capsys, *args):
    from mtlrec.cli import run

    capsys.readouterr()
    code = run(["compare", *args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_deltas_are_paired_by_seed_and_negative_transfer_is_marked(sweep, capsys):
    metrics = [
        "--metric",
        "test/ctr_auc",
        "--metric",
        "test/cvr_auc",
        "--metric",
        "test/ctr_logloss",
    ]
    code, out, err = compare(
        capsys, str(sweep), *metrics, "--baseline", "model=single_task", "--format", "json"
    )
    assert code == 0, err
    rows = {r["model"]: r for r in json.loads(out)}
    columns = list(json.loads(out)[0])  # each Δ right after its metric, the verdict last
    for m in ("test/ctr_auc", "test/cvr_auc", "test/ctr_logloss"):
        assert columns[columns.index(m) + 1] == f"Δ{m}"
    assert columns[-1] == "negative_transfer"
    mmoe = rows["mmoe"]
    # by hand: ctr deltas +0.010, +0.012, +0.011; cvr -0.020, -0.025, -0.015; logloss -0.02,
    # -0.01, -0.01
    assert mmoe["Δtest/ctr_auc"]["mean"] == pytest.approx(0.011)
    assert mmoe["Δtest/ctr_auc"]["std"] == pytest.approx(0.001)
    assert mmoe["Δtest/cvr_auc"]["mean"] == pytest.approx(-0.020)
    assert mmoe["Δtest/cvr_auc"]["std"] == pytest.approx(0.005)
    assert mmoe["Δtest/ctr_logloss"]["mean"] == pytest.approx(-0.04 / 3)
    # cvr: |-0.020| > t(0.975, 2) x 0.005 / sqrt(3) = 0.0124: negative transfer. The logloss
    # fell (better): no mark, though the delta is negative.
    assert mmoe["negative_transfer"] == "test/cvr_auc"
    esmm = rows["esmm"]  # cvr deltas -0.001, +0.002: within noise
    assert esmm["Δtest/cvr_auc"]["mean"] == pytest.approx(0.0005)
    assert esmm["negative_transfer"] == ""
    assert rows["single_task"]["Δtest/cvr_auc"] is None
    assert rows["single_task"]["negative_transfer"] == "(baseline)"
    code, out, _ = compare(
        capsys, str(sweep), *metrics, "--baseline", "model=single_task", "--format", "csv"
    )
    assert "Δtest/cvr_auc_mean,Δtest/cvr_auc_std" in out.splitlines()[0]


def test_noise_is_the_95_percent_interval_of_the_mean_delta():
    assert Delta(-0.02, 0.005, 3).noise == pytest.approx(4.303 * 0.005 / 3**0.5)
    assert Delta(-0.02, 0.005, 3).worse("test/cvr_auc")
    assert not Delta(-0.02, 0.005, 3).worse("test/ctr_logloss")  # lower is better there
    assert Delta(0.02, 0.005, 3).worse("test/ctr_logloss")
    assert not Delta(-0.5, 0.0, 1).worse("test/cvr_auc")  # one seed: no noise estimate


def test_seesaw_plot_and_pareto_front(sweep, capsys, tmp_path):
    pytest.importorskip("matplotlib")
    assert pareto_front([(0.7, 0.8), (0.71, 0.78), (0.70, 0.79), (0.72, 0.70)], (True, True)) == [
        0,
        1,
        3,
    ]
    code, _, err = compare(
        capsys, str(sweep), "--metric", "test/ctr_auc", "--metric", "test/cvr_auc",
        "--baseline", "model=single_task", "--plot", str(tmp_path / "plots"),
    )  # fmt: skip
    assert code == 0, err
    assert_real_png(tmp_path / "plots" / "seesaw.png")
    code, _, err = compare(capsys, str(sweep), "--baseline", "model=nope")
    assert (
        code == 1
        and err.strip() == "mtlrec compare: error: --filter model=nope: no run matches"
        or "no compared run matches" in err
    )
