"""`mtlrec train` around Hydra: how a failed single run reaches the user (once), and the job's
console logging (errors on stderr, the rest on stdout)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from helpers.cli import env
from mtlrec.commands import train
from mtlrec.errors import MtlrecError

JOB_LOGGING = Path(__file__).resolve().parents[2] / "conf" / "hydra" / "job_logging" / "mtlrec.yaml"


def _fail_with(error: BaseException, logged: bool):
    def fake_train_main():
        if logged:
            error.reported = True  # what the job's console handler does when it prints it
        raise SystemExit(1) from error

    return fake_train_main


@pytest.mark.parametrize("logged", [True, False])
def test_a_failed_run_is_printed_once(monkeypatch, capsys, logged):
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    monkeypatch.setattr(train, "check_overrides", lambda args: None)
    error = MtlrecError("trainer.batch_size must be an integer >= 1, got 0")
    monkeypatch.setattr("mtlrec.train.main", _fail_with(error, logged))
    assert train.run(["trainer.batch_size=0"]) == 1
    out, err = capsys.readouterr()
    assert out == "" and err == ("" if logged else f"{error}\n")


def test_other_exits_pass_through(monkeypatch):
    monkeypatch.setattr(train, "check_overrides", lambda args: None)

    def interrupted():
        raise SystemExit(143)

    monkeypatch.setattr("mtlrec.train.main", interrupted)
    with pytest.raises(SystemExit) as info:
        train.run([])
    assert info.value.code == 143


def test_full_error_raises_the_error_itself(monkeypatch):
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    monkeypatch.setattr(train, "check_overrides", lambda args: None)
    error = MtlrecError("boom")
    monkeypatch.setattr("mtlrec.train.main", _fail_with(error, False))
    with pytest.raises(MtlrecError, match="^boom$"):
        train.run([])


LOGGING_CHILD = r"""
import logging, logging.config, sys, yaml
from mtlrec.errors import MtlrecError
conf = yaml.safe_load(open(sys.argv[1]))
conf["handlers"]["file"]["filename"] = sys.argv[2]
logging.config.dictConfig(conf)
log = logging.getLogger("mtlrec.experiment")
log.info("epoch 1/1")
log.warning("still improving")
e = MtlrecError("bad value")
log.error("%s", e)
print("reported", e.reported)
"""


def test_job_logging_sends_errors_to_stderr_and_marks_them_reported(tmp_path):
    out = subprocess.run(
        [sys.executable, "-c", LOGGING_CHILD, str(JOB_LOGGING), str(tmp_path / "train.log")],
        capture_output=True,
        text=True,
        env=env(),
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout == "epoch 1/1\nstill improving\nreported True\n"
    assert out.stderr == "bad value\n"
    log = (tmp_path / "train.log").read_text()
    assert log.count("bad value") == 1 and "[ERROR]" in log and "epoch 1/1" in log
