"""The `mtlrec` command through real subprocesses, run from a directory outside the repository."""

import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from conftest import TINY

REPO = Path(__file__).resolve().parents[2]


def mtlrec(*args, cwd, env_extra=None, timeout=180):
    env = {**os.environ, "MTLREC_DATA_DIR": os.environ["MTLREC_DATA_DIR"], **(env_extra or {})}
    env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.run(
        ["mtlrec", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


def test_train_from_another_directory_writes_a_run_dir_with_microseconds(tmp_path):
    result = mtlrec("train", *TINY, "trainer.epochs=1", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    runs = list((tmp_path / "outputs").glob("*/*"))
    assert len(runs) == 1
    date, time = runs[0].parent.name, runs[0].name
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", date) and re.fullmatch(
        r"\d{2}-\d{2}-\d{2}-\d{6}", time
    )
    metrics = json.loads((runs[0] / "metrics.json").read_text())
    assert metrics["status"] == "completed" and "test/cvr_auc_entire" in metrics["metrics"]
    assert (runs[0] / ".hydra" / "overrides.yaml").read_text().count("trainer.epochs=1") == 1
    log = (runs[0] / "train.log").read_text()
    assert "epoch 1/1" in log and "test/ctr_auc=" in log
    assert "ctcvr_auc" in result.stdout  # the final table
    assert "metrics at the best epoch (1 of 1)" in result.stdout  # it names the best epoch
    assert "test: test/" not in result.stdout  # the table is not repeated as one long line
    assert "job done:" not in result.stdout  # a single run is no sweep job


def test_cfg_job_and_info_searchpath(tmp_path):
    result = mtlrec("train", "--cfg", "job", "model=mmoe", "model.num_experts=4", cwd=tmp_path)
    assert result.returncode == 0
    assert "name: mmoe" in result.stdout and "num_experts: 4" in result.stdout
    result = mtlrec("train", "--info", "searchpath", cwd=tmp_path)
    assert result.returncode == 0 and "pkg://mtlrec.conf" in result.stdout
    assert not (tmp_path / "outputs").exists()


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["trainer.epoch=3"], "Could not override 'trainer.epoch'"),
        (["model=nope"], "Could not find 'model/nope'"),
        (
            ["trainer.early_stopping.patience=100"],
            "Could not override 'trainer.early_stopping.patience': no such key; "
            "did you mean 'trainer.patience'?",
        ),
        (["model=mmoe", "model.num_experts=0"], "model.num_experts must be an integer >= 1, got 0"),
        (["trainer.lr=0"], "trainer.lr must be > 0, got 0"),
        (["trainer.batch_size=0"], "trainer.batch_size must be an integer >= 1, got 0"),
    ],
)
def test_user_errors_are_one_clear_line_and_exit_non_zero(tmp_path, args, needle):
    result = mtlrec("train", *TINY, *args, cwd=tmp_path)
    assert result.returncode == (2 if needle.startswith("Could not") else 1)
    assert needle in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_device_cuda_without_gpu(tmp_path):
    result = mtlrec(
        "train", *[o for o in TINY if not o.startswith("device")], "device=cuda", cwd=tmp_path
    )
    assert result.returncode == 1
    assert (
        "device=cuda but no CUDA GPU is visible" in result.stderr
        and "Traceback" not in result.stderr
    )
    metrics = json.loads(next((tmp_path / "outputs").glob("*/*/metrics.json")).read_text())
    assert metrics["status"] == "failed" and "device=cuda" in metrics["error"]


def test_an_existing_run_is_never_overwritten(tmp_path):
    run_dir = tmp_path / "run"
    first = mtlrec("train", *TINY, "trainer.epochs=1", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    before = (
        (run_dir / "metrics.json").read_bytes(),
        (run_dir / ".hydra" / "config.yaml").read_bytes(),
    )
    again = mtlrec(
        "train", *TINY, "trainer.epochs=1", "seed=3", f"hydra.run.dir={run_dir}", cwd=tmp_path
    )
    assert again.returncode == 1
    assert f"{run_dir}: already holds a run" in again.stderr
    assert (
        (run_dir / "metrics.json").read_bytes(),
        (run_dir / ".hydra" / "config.yaml").read_bytes(),
    ) == before


def test_unknown_command_and_version(tmp_path):
    result = mtlrec("frobnicate", cwd=tmp_path)
    assert result.returncode == 2 and "unknown command 'frobnicate'" in result.stderr
    result = mtlrec("--version", cwd=tmp_path)
    assert result.returncode == 0 and result.stdout.startswith("mtlrec ")


def test_python_dash_m_works(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "mtlrec", "train", "--cfg", "job"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0 and "name: esmm" in result.stdout


def test_the_wheel_ships_the_configs(tmp_path):
    """A non-editable install finds conf/ inside the package (pkg://mtlrec.conf)."""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(REPO),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    wheel = next(tmp_path.glob("mtlrec-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    for needed in (
        "mtlrec/conf/train.yaml",
        "mtlrec/conf/model/esmm.yaml",
        "mtlrec/conf/model/mmoe.yaml",
        "mtlrec/conf/dataset/synthetic_ccp.yaml",
        "mtlrec/conf/hydra/job_logging/mtlrec.yaml",
        "mtlrec/cli.py",
        "mtlrec/commands/__init__.py",  # pyproject's packages list must name mtlrec.commands
        "mtlrec/commands/train.py",
        "mtlrec/inference/__init__.py",  # ... and mtlrec.inference
    ):
        assert needed in names, needed
    meta = next(n for n in names if n.endswith(".dist-info/METADATA"))
    metadata = zipfile.ZipFile(wheel).read(meta).decode()
    assert "License-Expression: MIT" in metadata.splitlines()  # the SPDX string, not a table
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)


def test_pyproject_lists_every_package():
    """A package missing from pyproject's explicit list would be absent from an installed wheel."""
    import tomllib

    listed = set(
        tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    )
    found = {
        ".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "mtlrec").rglob("__init__.py")
    }
    assert found <= listed, sorted(found - listed)
