"""`mtlrec compare` on hand-written run dirs: exact columns, seed-group numbers, formats, errors."""

from __future__ import annotations

import csv
import io
import json
import statistics

import pytest

from helpers.runs import base_config, write_run
from mtlrec.commands.compare import main
from mtlrec.errors import MtlrecError
from mtlrec.report.compare import (
    build_table,
    differing_keys,
    find_run_dirs,
    load_runs,
    render,
    short_names,
)

# test/mean_auc per (num_experts, seed): chosen so that mean and std are easy to check by hand
AUC = {(2, 1): 0.70, (2, 2): 0.72, (2, 3): 0.74, (4, 1): 0.75, (4, 2): 0.80}


@pytest.fixture
def sweep(tmp_path):
    """A 2 x 3 expert/seed sweep: 5 completed jobs and 1 failed one."""
    root = tmp_path / "multirun" / "12-00-00"
    job = 0
    for experts in (2, 4):
        for seed in (1, 2, 3):
            cfg = base_config(model__num_experts=experts, seed=seed)
            overrides = [f"model.num_experts={experts}", f"seed={seed}"]
            if (experts, seed) in AUC:
                auc = AUC[(experts, seed)]
                metrics = {"test/mean_auc": auc, "test/ctr_auc": auc - 0.1, "test/ctr_logloss": 0.3}
                write_run(root / str(job), cfg, metrics, overrides=overrides)
            else:
                write_run(
                    root / str(job), cfg, status="failed", error="loss is nan", overrides=overrides
                )
            job += 1
    return root


def test_finds_runs_in_sweeps_single_runs_and_mixes(tmp_path, sweep):
    single = write_run(tmp_path / "outputs" / "2026-11-28" / "10-00-00", base_config())
    (single / "checkpoints").mkdir()
    found = find_run_dirs([sweep, single])
    assert [p.name for p in found] == ["0", "1", "2", "3", "4", "5", "10-00-00"]
    # Given twice (a parent and the dir itself): listed once.
    assert len(find_run_dirs([tmp_path, sweep / "3"])) == 7
    assert find_run_dirs([sweep / "3" / "metrics.json"]) == [(sweep / "3").resolve()]


def test_path_errors_are_one_line(tmp_path):
    with pytest.raises(MtlrecError, match=r"^.*nope: no such file or directory$"):
        find_run_dirs([tmp_path / "nope"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(MtlrecError, match=r"empty: holds no run dir \(a dir with metrics.json"):
        find_run_dirs([tmp_path / "empty"])


def test_columns_are_the_differing_config_values(sweep):
    runs = load_runs([sweep])
    keys = differing_keys(runs)
    assert keys == ["model.num_experts", "seed"]  # data_order_seed follows seed: not repeated
    assert short_names(keys) == {"model.num_experts": "num_experts", "seed": "seed"}
    table = build_table(runs, group_by_seed=False)
    assert table.columns == [
        "run",
        "num_experts",
        "seed",
        "test/mean_auc",
        "test/ctr_auc",
        "best_epoch",
        "epochs",
        "wall_s",
        "samples_per_s",
        "status",
        "error",
    ]  # default metrics: the test AUC family of the monitor val/mean_auc, mean first
    assert [r["status"] for r in table.rows] == ["completed"] * 5 + ["failed"]
    assert table.rows[5]["test/mean_auc"] is None and table.rows[5]["error"] == "loss is nan"
    assert [r["test/mean_auc"] for r in table.rows[:5]] == list(AUC.values())


def test_seed_groups_mean_std_and_n(sweep):
    table = build_table(load_runs([sweep]), group_by_seed=True)
    assert table.columns == [
        "num_experts",
        "test/mean_auc",
        "test/ctr_auc",
        "n",
        "seeds",
        "wall_s",
        "status",
    ]
    two, four = table.rows
    assert (two["num_experts"], two["n"], two["seeds"]) == (2, 3, "1,2,3")
    assert two["test/mean_auc"][0] == pytest.approx(0.72, abs=1e-12)
    assert two["test/mean_auc"][1] == pytest.approx(0.02, abs=1e-12)  # sample std of .70 .72 .74
    assert (four["n"], four["status"]) == (2, "2 completed, 1 failed")
    assert four["test/mean_auc"] == (
        statistics.fmean([0.75, 0.80]),
        statistics.stdev([0.75, 0.80]),
    )
    assert four["test/mean_auc"][1] == pytest.approx(0.0353553390593, abs=1e-12)


def test_grouping_is_automatic_when_only_the_seed_differs(sweep):
    runs = [r for r in load_runs([sweep]) if r.config["model.num_experts"] == 2]
    table = build_table(runs)
    assert table.grouped and len(table.rows) == 1 and table.rows[0]["n"] == 3
    assert not build_table(runs, group_by_seed=False).grouped


def test_cli_formats_sort_filter_output(sweep, tmp_path, capsys):
    assert main([str(sweep), "--format", "csv", "--sort", "test/mean_auc", "--no-group"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    # AUC: best (highest) first; the failed run (no value) last.
    assert [r["test/mean_auc"] for r in rows] == ["0.8", "0.75", "0.74", "0.72", "0.7", ""]
    assert rows[-1]["status"] == "failed"

    main(
        [
            str(sweep),
            "--format",
            "json",
            "--filter",
            "num_experts=4",
            "--metric",
            "test/ctr_logloss",
            "--no-group",  # only the seed differs now: it would group automatically
        ]
    )
    items = json.loads(capsys.readouterr().out)
    assert [(i["seed"], i["test/ctr_logloss"], i["status"]) for i in items] == [
        (1, 0.3, "completed"),
        (2, 0.3, "completed"),
        (3, None, "failed"),
    ]

    out = tmp_path / "results.md"
    main([str(sweep), "--group-by-seed", "--format", "markdown", "--output", str(out)])
    lines = out.read_text().splitlines()
    assert (
        lines[0] == "| num_experts | test/mean_auc | test/ctr_auc | n | seeds | wall_s | status |"
    )
    assert lines[2].startswith("| 2 | 0.7200 ± 0.0200 | 0.6200 ± 0.0200 | 3 | 1,2,3 |")

    main([str(sweep), "--group-by-seed", "--format", "csv"])
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert float(rows[1]["test/mean_auc_mean"]) == pytest.approx(0.775)
    assert float(rows[1]["test/mean_auc_std"]) == pytest.approx(statistics.stdev([0.75, 0.8]))

    main(
        [str(sweep), "--filter", "model=mmoe", "--filter", "model.num_experts=2", "--format", "csv"]
    )
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [r["n"] for r in rows] == ["3"]  # the three seeds of 2 experts, grouped
    with pytest.raises(MtlrecError, match=r"^--filter model=esmm: no run matches$"):
        main([str(sweep), "--filter", "model=esmm"])

    main([str(sweep), "--filter", "status=failed"])
    text = capsys.readouterr().out
    assert "1 run(s)" in text and "loss is nan" in text and "failed" in text


def test_sort_and_filter_by_any_metric_of_the_runs(sweep, capsys):
    """A metric that is not a default column sorts (and is shown); metrics filter by bounds."""
    assert main([str(sweep), "--format", "csv", "--sort", "test/ctr_logloss", "--no-group"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert "test/ctr_logloss" in rows[0] and "test/mean_auc" in rows[0]
    assert [r["test/ctr_logloss"] for r in rows] == ["0.3"] * 5 + [""]  # losses: lowest first
    main([str(sweep), "--format", "csv", "--filter", "test/mean_auc>=0.74", "--no-group"])
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert sorted(r["test/mean_auc"] for r in rows) == ["0.74", "0.75", "0.8"]
    main([str(sweep), "--format", "csv", "--filter", "test/mean_auc<0.74", "--no-group"])
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert sorted(r["test/mean_auc"] for r in rows) == ["0.7", "0.72"]  # the failed run has none
    with pytest.raises(
        MtlrecError, match=r"^--filter test/mean_auc>=high: 'high' is not a number$"
    ):
        main([str(sweep), "--filter", "test/mean_auc>=high"])


def test_cli_user_errors(sweep):
    with pytest.raises(
        MtlrecError, match=r"^--filter model.nope: no compared run has this config key"
    ):
        main([str(sweep), "--filter", "model.nope=1"])
    with pytest.raises(MtlrecError, match=r"^--filter num_experts=3: no run matches$"):
        main([str(sweep), "--filter", "num_experts=3"])
    with pytest.raises(
        MtlrecError, match=r"^--sort nope: no such column; columns: run, num_experts"
    ):
        main([str(sweep), "--sort", "nope", "--no-group"])
    with pytest.raises(MtlrecError, match=r"^--metric test/nope: no compared run has this metric"):
        main([str(sweep), "--metric", "test/nope"])


def test_running_and_broken_runs_never_crash(tmp_path, capsys):
    running = write_run(
        tmp_path / "a",
        base_config(),
        status="running",
        history=[{"epoch": 1, "val/mean_auc": 0.6, "train/loss": 1.0}],
    )
    broken = write_run(tmp_path / "b", base_config(seed=2))
    (broken / "metrics.json").write_text('{"status": "compl')  # half-copied
    nothing = tmp_path / "c" / ".hydra"
    nothing.mkdir(parents=True)
    (nothing / "config.yaml").write_text("model: {name: esmm}\n")
    assert main([str(tmp_path), "--format", "json", "--no-group"]) == 0
    items = {i["run"]: i for i in json.loads(capsys.readouterr().out)}
    assert items["a"]["status"] == "running" and items["a"]["epochs"] == 1
    assert items["b"]["status"] == "not started"
    assert items["b"]["error"].startswith("metrics.json: JSONDecodeError")
    assert items["c"]["status"] == "not started" and items["c"]["model"] == "esmm"
    assert running.name == "a"


def test_table_render_has_one_row_per_run(sweep):
    text = render(build_table(load_runs([sweep]), group_by_seed=False), "table", width=200)
    assert "6 run(s)" in text
    assert text.count("completed") == 5 and text.count("failed") == 1
    assert "0.8000" in text


def test_a_value_derived_from_a_swept_override_is_no_axis_of_its_own(tmp_path):
    """`dataset.files: synth_p${dataset.p}.csv` with `dataset.p=1,2` swept: one column, p."""
    root = tmp_path / "sweep"
    for job, (p, seed) in enumerate([(1, 1), (1, 2), (2, 1), (2, 2)]):
        cfg = base_config(seed=seed)
        cfg["dataset"].update(p=p, files=f"synth_p{p}.csv")
        write_run(
            root / str(job),
            cfg,
            {"test/mean_auc": 0.7 + p / 100},
            overrides=[f"dataset.p={p}", f"seed={seed}"],
        )
    runs = load_runs([root])
    assert differing_keys(runs) == ["dataset.p", "seed"]
    table = build_table(runs, group_by_seed=True)
    assert table.columns[:2] == ["p", "test/mean_auc"]
    # A value nobody overrode that does NOT follow one-to-one from the swept one stays a column.
    write_run(
        root / "4",
        {**base_config(seed=3), "dataset": {**base_config()["dataset"], "p": 2, "files": "x.csv"}},
        {"test/mean_auc": 0.5},
        overrides=["dataset.p=2", "seed=3"],
    )
    assert differing_keys(load_runs([root])) == ["dataset.p", "seed", "dataset.files"]


def test_default_columns_show_every_tasks_main_metric(tmp_path):
    """A rating (regression) + like (binary) run monitored on AUC: the rating task gets its RMSE
    column too, instead of test/mean_auc alone (which equals the like AUC)."""
    from mtlrec.report.keys import default_metrics

    metrics = {
        "test/mean_auc": 0.7, "test/like_auc": 0.7, "test/like_logloss": 0.5,
        "test/rating_mse": 1.0, "test/rating_rmse": 1.0, "test/rating_mae": 0.8,
        "test/mean_mse": 1.0, "test/mean_rmse": 1.0,
    }  # fmt: skip
    runs = load_runs([write_run(tmp_path / "r", base_config(), metrics)])
    assert default_metrics(runs) == ["test/mean_auc", "test/like_auc", "test/rating_rmse"]
    # a run without rmse (older runs) falls back to mse
    old = {k: v for k, v in metrics.items() if "rmse" not in k}
    runs = load_runs([write_run(tmp_path / "o", base_config(), old)])
    assert default_metrics(runs) == ["test/mean_auc", "test/like_auc", "test/rating_mse"]
