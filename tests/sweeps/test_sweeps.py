"""Real sweeps through the CLI in a subprocess: complete job dirs, failed jobs, launchers, Optuna."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import pytest
import yaml
from hydra.core.utils import JobReturn, JobStatus
from omegaconf import OmegaConf

from helpers.runs import TINY_CLI, mtlrec
from mtlrec.sweeps.callback import (
    BASIC_SWEEPER,
    SweepReport,
    parallel_jobs,
    thread_share,
    usable_cores,
)

RUN_FILES = [
    ".hydra/config.yaml",
    ".hydra/overrides.yaml",
    ".hydra/hydra.yaml",
    "train.log",
    "env.json",
    "history.csv",
    "metrics.json",
    "checkpoints/best.pt",
]


def assert_complete(run_dir: Path) -> dict:
    missing = [f for f in RUN_FILES if not (run_dir / f).is_file()]
    assert not missing, f"{run_dir}: missing {missing}"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["error"] is None
    assert 0.0 < metrics["metrics"]["test/mean_auc"] < 1.0
    return metrics


def test_sweep_two_complete_job_dirs_and_compare_csv(tmp_path):
    sweep = tmp_path / "sweep"
    args = ["-m", "model=mmoe", "model.num_experts=1,2", "trainer.epochs=1", *TINY_CLI]
    proc = mtlrec("train", *args, f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = sorted(p.name for p in sweep.iterdir() if p.is_dir())
    assert jobs == ["0", "1"]
    # Each job says its result in one line; the sweep ends with the table of its jobs and the
    # command that shows it again (no per-job metrics table, no test: line repeating it).
    out = proc.stdout.splitlines()
    assert sum(ln.startswith("job done: best epoch 1 of 1  val/mean_auc ") for ln in out) == 2
    assert "metrics at the best epoch" not in proc.stdout and "test: test/" not in proc.stdout
    assert out[-1] == f"compare again: mtlrec compare {sweep}"
    assert f"sweep {sweep}:" in out and "2 run(s)" in proc.stdout
    assert "test/mean_auc" in proc.stdout and "completed" in out[-2] + out[-3]
    assert "test: test/" in (sweep / "0" / "train.log").read_text()  # the log keeps the metrics
    for job, experts in (("0", 1), ("1", 2)):
        assert_complete(sweep / job)
        config = yaml.safe_load((sweep / job / ".hydra" / "config.yaml").read_text())
        assert config["model"]["num_experts"] == experts
        header = (sweep / job / "history.csv").read_text().splitlines()[0].split(",")
        assert [c for c in header if c.startswith("gate/ctr/")] == [
            f"gate/ctr/expert_{e}" for e in range(experts)
        ]

    proc = mtlrec("compare", str(sweep), "--format", "csv", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    rows = list(csv.DictReader(io.StringIO(proc.stdout)))
    assert [r["run"] for r in rows] == ["0", "1"]
    assert [r["num_experts"] for r in rows] == ["1", "2"]
    assert [r["status"] for r in rows] == ["completed", "completed"]
    for row, job in zip(rows, ("0", "1"), strict=True):
        metrics = json.loads((sweep / job / "metrics.json").read_text())
        assert float(row["test/mean_auc"]) == metrics["metrics"]["test/mean_auc"]
        assert int(row["best_epoch"]) == metrics["best_epoch"] == 1
    # Only num_experts differs: no other config column.
    assert list(rows[0])[:2] == ["run", "num_experts"]
    assert "seed" not in rows[0]


def test_failed_jobs_are_recorded_and_the_sweep_goes_on_then_exits_1(tmp_path):
    """Bad values (jobs 0, 1) and a NaN loss (job 3, lr=1e12): each recorded in its own dir, the
    good job (2) still runs, and the end of the sweep names all three failures; exit status 1."""
    sweep = tmp_path / "sweep"
    args = ["-m", "model=mmoe", "model.num_experts=0,1", "trainer.lr=0.001,1e12"]
    args += ["trainer.epochs=1", *TINY_CLI, f"hydra.sweep.dir={sweep}"]
    proc = mtlrec("train", *args, cwd=tmp_path)
    assert proc.returncode == 1
    bad_value = "model.num_experts must be an integer >= 1, got 0"
    errors = {}
    for job in ("0", "1", "3"):
        metrics = json.loads((sweep / job / "metrics.json").read_text())
        assert metrics["status"] == "failed"
        errors[job] = metrics["error"]
    assert errors["0"] == errors["1"] == bad_value
    assert errors["3"].startswith("epoch 1 step ")
    assert "training loss of task(s) ['ctr', 'cvr'] is NaN/inf" in errors["3"]
    assert_complete(sweep / "2")  # ran after two failed jobs
    tail = proc.stderr.strip().splitlines()[-4:]
    assert tail == [
        "mtlrec train: error: 3 of 4 sweep job(s) did not complete "
        "(see each dir's metrics.json and train.log):",
        *[f"  {sweep / job}: failed: {errors[job]}" for job in ("0", "1", "3")],
    ]


def _job_config(tmp_path: Path, sweeper: str = BASIC_SWEEPER):
    return OmegaConf.create(
        {
            "hydra": {
                "mode": "RunMode.MULTIRUN",
                "runtime": {"output_dir": str(tmp_path / "sweep" / "3")},
                "sweep": {"dir": str(tmp_path / "sweep")},
                "sweeper": {"_target_": sweeper},
            }
        }
    )


def test_exception_before_the_run_is_recorded_and_turned_into_nan(tmp_path):
    """A job that dies before experiment.run writes anything (e.g. an import error) still gets
    metrics.json status=failed; under the BasicSweeper the sweep goes on (result NaN)."""
    config = _job_config(tmp_path)
    ret = JobReturn(status=JobStatus.FAILED, _return_value=RuntimeError("loss is nan"))
    report = SweepReport()
    report.on_multirun_start(config)
    report.on_job_end(config, ret)
    metrics = json.loads((tmp_path / "sweep" / "3" / "metrics.json").read_text())
    assert metrics == {
        "schema_version": 2,
        "status": "failed",
        "error": "RuntimeError: loss is nan",
    }
    assert ret.status == JobStatus.COMPLETED and math.isnan(ret.return_value)

    with pytest.raises(SystemExit) as exit_info:
        report.on_multirun_end(config)
    assert exit_info.value.code == 1


def test_an_interrupted_job_stops_an_in_process_sweep(tmp_path):
    from mtlrec.runs.run_dir import RunDir
    from mtlrec.sweeps.callback import BASIC_LAUNCHER
    from mtlrec.training.signals import TrainingInterrupted

    config = _job_config(tmp_path)
    config.hydra.launcher = {"_target_": BASIC_LAUNCHER}
    RunDir(tmp_path / "sweep" / "3").update_metrics(
        status="interrupted", error="stopped by SIGTERM"
    )
    ret = JobReturn(
        status=JobStatus.FAILED, _return_value=TrainingInterrupted("stopped by SIGTERM", 15)
    )
    with pytest.raises(SystemExit) as exit_info:
        SweepReport().on_job_end(config, ret)
    assert exit_info.value.code == 143
    metrics = json.loads((tmp_path / "sweep" / "3" / "metrics.json").read_text())
    assert metrics["status"] == "interrupted"  # not overwritten with failed


def test_other_sweepers_keep_the_failure(tmp_path):
    optuna = "hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper"
    config = _job_config(tmp_path, sweeper=optuna)
    error = ValueError("bad")
    ret = JobReturn(status=JobStatus.FAILED, _return_value=error)
    SweepReport().on_job_end(config, ret)
    assert ret.status == JobStatus.FAILED and ret._return_value is error


def test_single_runs_are_left_alone(tmp_path):
    config = _job_config(tmp_path)
    config.hydra.mode = "RunMode.RUN"
    ret = JobReturn(status=JobStatus.FAILED, _return_value=ValueError("bad"))
    SweepReport().on_job_end(config, ret)
    assert ret.status == JobStatus.FAILED
    assert not (tmp_path / "sweep").exists()


def test_a_completed_sweep_passes(tmp_path):
    config = _job_config(tmp_path)
    job = tmp_path / "sweep" / "0"
    job.mkdir(parents=True)
    (job / "metrics.json").write_text(json.dumps({"status": "completed"}))
    report = SweepReport()
    report.on_multirun_start(config)
    report.on_multirun_end(config)  # no SystemExit


@pytest.mark.parametrize(
    ("launcher", "cpus", "expected"),
    [
        ({"_target_": "hydra._internal.core_plugins.basic_launcher.BasicLauncher"}, 2, None),
        (
            {
                "_target_": "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher",
                "n_jobs": 2,
            },
            2,
            1,
        ),
        (
            {
                "_target_": "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher",
                "n_jobs": -1,
            },
            2,
            1,
        ),
        (
            {
                "_target_": "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher",
                "n_jobs": 2,
            },
            16,
            8,
        ),
        (
            {
                "_target_": "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher",
                "n_jobs": -2,
            },
            16,
            1,
        ),
        (
            {
                "_target_": "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher",
                "n_jobs": 1,
            },
            16,
            None,
        ),
        (
            {
                "_target_": "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher",
                "n_jobs": 3,
            },
            16,
            5,
        ),
        (
            {
                "_target_": "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher",
                "cpus_per_task": 4,
            },
            64,
            4,
        ),
    ],
)
def test_thread_share(launcher, cpus, expected):
    assert thread_share("RunMode.MULTIRUN", OmegaConf.create(launcher), cpus) == expected
    assert thread_share("RunMode.RUN", OmegaConf.create(launcher), cpus) is None


def test_parallel_jobs_follows_joblib_negative_counts():
    joblib = "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"
    assert parallel_jobs(OmegaConf.create({"_target_": joblib, "n_jobs": -1}), 8) == 8
    assert parallel_jobs(OmegaConf.create({"_target_": joblib, "n_jobs": -3}), 8) == 6


def test_joblib_launcher_runs_jobs_in_parallel_with_their_share_of_threads(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    sweep = tmp_path / "sweep"
    args = ["-m", "launcher=joblib", "hydra.launcher.n_jobs=2", "seed=1,2", "trainer.epochs=1"]
    tiny = [a for a in TINY_CLI if not a.startswith("trainer.num_threads")]  # threads: the share
    proc = mtlrec("train", *args, *tiny, f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    expected = max(1, usable_cores() // 2)
    for job in ("0", "1"):
        metrics = assert_complete(sweep / job)
        assert metrics["num_threads"] == expected
        env = json.loads((sweep / job / "env.json").read_text())
        assert env["torch_num_threads"] == expected
    hydra_cfg = yaml.safe_load((sweep / "0" / ".hydra" / "hydra.yaml").read_text())
    assert "JoblibLauncher" in hydra_cfg["hydra"]["launcher"]["_target_"]


def test_submitit_local_launcher(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    sweep = tmp_path / "sweep"
    args = [
        "-m",
        "launcher=submitit_local",
        "model=mmoe",
        "model.num_experts=2",
        "trainer.epochs=1",
    ]
    tiny = [a for a in TINY_CLI if not a.startswith("trainer.num_threads")]
    proc = mtlrec("train", *args, *tiny, f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-2000:]
    metrics = assert_complete(sweep / "0")
    assert metrics["num_threads"] == 1  # hydra.launcher.cpus_per_task=1 in launcher/submitit_local
    assert list((sweep / ".submitit").iterdir()), "submitit wrote no job folder"
