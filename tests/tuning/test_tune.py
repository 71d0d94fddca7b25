"""`mtlrec tune`: search files, a real Optuna study with pruning, an interrupted and resumed study."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

optuna = pytest.importorskip("optuna", minversion="4")

from mtlrec.errors import MtlrecError  # noqa: E402
from mtlrec.tuning.space import ParamSpec, load_search, render, suggest  # noqa: E402

TINY = ["dataset.num_rows=4000", "trainer.batch_size=256", "device=cpu"]


def write_search(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def tune(args: list[str], cwd: Path, **kw) -> subprocess.Popen:
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    return subprocess.Popen(
        [sys.executable, "-m", "mtlrec", "tune", *args],
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kw,
    )


def test_builtin_searches_load_with_their_directions():
    mmoe = load_search("mmoe")
    assert mmoe.metric == "val/mean_auc" and mmoe.direction == "maximize"
    assert mmoe.params["model.expert_dims"].type == "widths"
    mmoe.validate()
    load_search("esmm").validate()


@pytest.mark.parametrize(
    ("body", "line"),
    [
        (
            "metric: val/foo\nparams: {trainer.lr: {type: float, low: 0.1, high: 1}}\n",
            "search.metric='val/foo' is not a metric mtlrec reports",
        ),
        (
            "params: {trainer.lr: {type: flot, low: 0.1, high: 1}}\n",
            "search.params.trainer.lr.type='flot': expected one of float, int, categorical, widths",
        ),
        (
            "trails: 3\nparams: {trainer.lr: {type: float, low: 0.1, high: 1}}\n",
            "search.trails is not a key of search (did you mean search.trials?)",
        ),
        (
            "params: {trainer.lr: {type: float, low: 1, high: 0.1}}\n",
            "search.params.trainer.lr: a float parameter needs low < high",
        ),
        (
            "params: {trainer.lr: {type: float, low: 0, high: 1, log: true}}\n",
            "search.params.trainer.lr: log=true needs low > 0, got 0.0",
        ),
        (
            "params: {model.expert_dims: {type: widths, layers: [2, 1], choices: [8]}}\n",
            "search.params.model.expert_dims.layers must be [min, max] with 1 <= min <= max, got [2, 1]",
        ),
    ],
)
def test_bad_search_files_are_one_line(tmp_path, body, line):
    path = write_search(tmp_path / "s.yaml", body)
    with pytest.raises(MtlrecError) as e:
        load_search(str(path)).validate()
    assert line in str(e.value)
    assert "\n" not in str(e.value)


def test_a_trial_gets_overrides_with_lists_of_widths():
    params = {
        "trainer.lr": ParamSpec("float", low=1e-4, high=1e-2, log=True),
        "model.num_experts": ParamSpec("categorical", choices=[1, 2, 4]),
        "model.embedding_dim": ParamSpec("int", low=8, high=32, step=8),
        "model.expert_dims": ParamSpec("widths", layers=[1, 3], choices=[16, 64]),
    }
    fixed = optuna.trial.FixedTrial(
        {
            "trainer.lr": 0.00125,
            "model.num_experts": 4,
            "model.embedding_dim": 24,
            "model.expert_dims.layers": 2,
            "model.expert_dims.0": 64,
            "model.expert_dims.1": 16,
        }
    )
    assert suggest(fixed, params) == [
        "trainer.lr=0.00125",
        "model.num_experts=4",
        "model.embedding_dim=24",
        "model.expert_dims=[64,16]",
    ]
    assert render([1, None, True, 0.1]) == "[1,null,true,0.1]"


def test_a_study_prunes_and_records_every_trial_as_a_run_dir(tmp_path):
    search = write_search(
        tmp_path / "s.yaml",
        "metric: val/mean_auc\ntrials: 2\noverrides: [model=mmoe]\n"
        "sampler: {name: random, seed: 3}\n"
        "pruner: {name: threshold, lower: 0.9999, warmup_epochs: 0}\n"  # every trial pruned
        "params:\n  trainer.lr: {type: float, low: 1.0e-3, high: 1.0e-2, log: true}\n",
    )
    study_dir = tmp_path / "study"
    proc = tune(
        [
            str(search),
            *TINY,
            "trainer.epochs=30",
            "trainer.patience=null",
            "--study-dir",
            str(study_dir),
            "--no-plots",
        ],
        tmp_path,
    )
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, err
    summary = json.loads((study_dir / "study.json").read_text())
    assert summary["trials"] == {"pruned": 2}
    assert summary["best_trial"] is None
    # results on stdout (the table, then the best line), messages on stderr
    assert "study s: val/mean_auc (maximize)" in out and "study s:" not in err
    assert (
        out.splitlines()[-1]
        == f"best: trial None val/mean_auc=none (None); compare: mtlrec compare {study_dir / 'trials'}"
    )
    study = optuna.load_study(study_name="s", storage=f"sqlite:///{study_dir / 'study.db'}")
    for t in study.trials:
        assert t.state.name == "PRUNED"
        assert 1 <= len(t.intermediate_values) < 30
        run_dir = Path(t.user_attrs["run_dir"])
        assert run_dir == study_dir / "trials" / str(t.number)
        assert (run_dir / ".hydra" / "overrides.yaml").is_file()
        history = (run_dir / "history.csv").read_text().splitlines()
        assert len(history) - 1 == len(t.intermediate_values)
        assert f"trainer.lr={t.params['trainer.lr']!r}" in t.user_attrs["overrides"]


def test_an_interrupted_study_resumes_and_asks_the_interrupted_trial_again(tmp_path):
    search = write_search(
        tmp_path / "s.yaml",
        "metric: val/mean_logloss\ntrials: 2\noverrides: [model=shared_bottom]\n"
        "sampler: {name: random, seed: 5}\npruner: {name: none}\n"
        "params:\n  trainer.lr: {type: float, low: 1.0e-3, high: 1.0e-2, log: true}\n",
    )
    study_dir = tmp_path / "study"
    args = [
        str(search),
        *TINY,
        "trainer.epochs=60",
        "trainer.patience=null",
        "--study-dir",
        str(study_dir),
        "--no-plots",
    ]
    proc = tune(args, tmp_path)
    history = study_dir / "trials" / "0" / "history.csv"
    deadline = time.monotonic() + 120
    while not history.is_file() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.1)
    assert history.is_file(), proc.communicate()[1]
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143
    assert f"interrupted; resume with: mtlrec tune {search} --study-dir {study_dir}" in " ".join(
        err.split()
    )
    assert json.loads((study_dir / "trials/0/metrics.json").read_text())["status"] == "interrupted"

    changed = tune([*args[:-3], "trainer.lr=0.1", *args[-3:]], tmp_path)
    _, err = changed.communicate(timeout=60)
    assert changed.returncode == 1
    assert "this study was started with another search (overrides differ)" in err

    resumed = tune(args, tmp_path)
    _, err = resumed.communicate(timeout=400)
    assert resumed.returncode == 0, err
    study = optuna.load_study(study_name="s", storage=f"sqlite:///{study_dir / 'study.db'}")
    first, retry = study.trials[0], study.trials[1]
    assert first.state.name == "FAIL" and first.user_attrs["interrupted"] is True
    assert retry.user_attrs["retry_of"] == 0 and retry.params == first.params
    assert [t.state.name for t in study.trials[1:]] == ["COMPLETE", "COMPLETE"]
    summary = json.loads((study_dir / "study.json").read_text())
    assert summary["direction"] == "minimize"
    values = [t.value for t in study.trials[1:]]
    assert summary["best_value"] == min(values)


def test_table_numbers_are_short_and_overrides_exact():
    from mtlrec.tuning.command import short

    assert short("trainer.lr=0.00024156772025296256") == "trainer.lr=0.0002416"
    assert short("model.num_experts=4") == "model.num_experts=4"
    assert short("model.expert_dims=[64,16]") == "model.expert_dims=[64,16]"
    assert short("model.gate=attention") == "model.gate=attention"


def test_a_multi_objective_study_in_another_storage(tmp_path):
    """--metrics/--directions: one value per metric at each run's best epoch, the Pareto front in
    study.json and on stdout; --storage: the study lives in the given database, named metrics."""
    search = write_search(
        tmp_path / "s.yaml",
        "metric: val/mean_auc\ntrials: 2\noverrides: [model=shared_bottom]\n"
        "sampler: {name: random, seed: 7}\n"
        "params:\n  trainer.lr: {type: float, low: 1.0e-3, high: 1.0e-2, log: true}\n",
    )
    study_dir, storage = tmp_path / "study", f"sqlite:///{tmp_path / 'shared.db'}"
    args = [str(search), *TINY, "trainer.epochs=2", "--study-dir", str(study_dir), "--no-plots"]
    metrics = "--metrics=val/ctr_auc,val/cvr_logloss"
    proc = tune([*args, metrics, "--storage", storage], tmp_path)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert not (study_dir / "study.db").exists()  # the given storage holds the study
    study = optuna.load_study(study_name="s", storage=storage)
    assert study.metric_names == ["val/ctr_auc", "val/cvr_logloss"]
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE"]
    summary = json.loads((study_dir / "study.json").read_text())
    front = {p["trial"] for p in summary["pareto_front"]}
    assert front == {t.number for t in study.best_trials} and front
    for t in study.trials:
        run = Path(t.user_attrs["run_dir"])
        best = json.loads((run / "metrics.json").read_text())["best_epoch"]
        row = next(
            r for r in csv.DictReader((run / "history.csv").open()) if r["epoch"] == str(best)
        )
        assert t.values == [float(row["val/ctr_auc"]), float(row["val/cvr_logloss"])]
    assert out.splitlines()[-1].startswith("pareto front (val/ctr_auc, val/cvr_logloss): trial(s) ")
    bad = tune([*args, metrics, "--directions", "maximize"], tmp_path)
    _, err = bad.communicate(timeout=60)
    assert bad.returncode == 1 and err.strip().splitlines() == [
        "mtlrec tune: error: --directions maximize: give maximize or minimize for each of the 2 "
        "metric(s) val/ctr_auc,val/cvr_logloss"
    ]
