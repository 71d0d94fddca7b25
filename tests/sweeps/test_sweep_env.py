"""MTLREC_SWEEP_JOBS, which SweepReport.on_multirun_start sets for the jobs ("sweep job 2/3"), is
put back as it was when the sweep ends (completed, with failed jobs, or stopped), so a process
that goes on after an in-process sweep (the test session) does not hand it to later runs and
their subprocesses (tests/helpers/cli.py `env()` copies os.environ)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from hydra.core.utils import JobReturn, JobStatus
from omegaconf import OmegaConf

from helpers.cli import env
from mtlrec.sweeps.callback import BASIC_LAUNCHER, BASIC_SWEEPER, SWEEP_JOBS_ENV, SweepReport


def _sweep(tmp_path: Path, status: str):
    """A 3-job grid sweep (seed=1,2,3) whose job 0 ended with `status`; its config."""
    job = tmp_path / "sweep" / "0"
    job.mkdir(parents=True)
    (job / "metrics.json").write_text(json.dumps({"status": status}))
    return OmegaConf.create(
        {
            "hydra": {
                "mode": "RunMode.MULTIRUN",
                "runtime": {"output_dir": str(job)},
                "sweep": {"dir": str(tmp_path / "sweep")},
                "sweeper": {"_target_": BASIC_SWEEPER, "params": {"seed": "1,2,3"}},
                "launcher": {"_target_": BASIC_LAUNCHER},
            }
        }
    )


@pytest.mark.parametrize("before", [None, "7"])
@pytest.mark.parametrize("ending", ["completed", "failed jobs", "stopped"])
def test_the_jobs_count_is_put_back_when_the_sweep_ends(tmp_path, monkeypatch, before, ending):
    from mtlrec.training.signals import TrainingInterrupted

    if before is None:
        monkeypatch.delenv(SWEEP_JOBS_ENV, raising=False)
    else:
        monkeypatch.setenv(SWEEP_JOBS_ENV, before)
    config = _sweep(tmp_path, "failed" if ending == "failed jobs" else "completed")
    report = SweepReport()
    report.on_multirun_start(config)
    assert os.environ[SWEEP_JOBS_ENV] == "3"  # what the jobs read
    if ending == "completed":
        report.on_multirun_end(config)
    elif ending == "failed jobs":
        with pytest.raises(SystemExit) as info:
            report.on_multirun_end(config)
        assert info.value.code == 1
    else:  # an in-process job stopped by SIGTERM ends the sweep: Hydra calls no on_multirun_end
        stopped = TrainingInterrupted("stopped by SIGTERM", 15)
        with pytest.raises(SystemExit) as info:
            report.on_job_end(config, JobReturn(status=JobStatus.FAILED, _return_value=stopped))
        assert info.value.code == 143
    assert os.environ.get(SWEEP_JOBS_ENV) == before
    assert env().get(SWEEP_JOBS_ENV) == before  # what a later `mtlrec` subprocess gets
