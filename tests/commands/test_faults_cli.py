"""Faults a user meets, each one line and never a traceback: a full disk during a checkpoint write
and at the start of a run, a last.pt that is a directory, --config-dir typos."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest
import torch

from conftest import TINY
from helpers.cli import env, lines, mtlrec
from mtlrec.errors import MtlrecError
from mtlrec.runs import run_dir as run_dir_module
from mtlrec.runs.atomic import NO_SPACE_FAULT_ENV, NoSpaceError

NO_SPACE = "cannot write it: No space left on device; free some space on that disk (its previous version, if any, is kept) and run again"  # noqa: E501


def test_a_full_disk_in_a_checkpoint_write_keeps_the_old_file_in_process(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    run_dir_module.atomic_torch_save({"w": torch.ones(3)}, path)
    before = path.read_bytes()

    def full_disk_save(obj, f):
        f.write(b"x" * 100)  # part of the file made it, then the disk was full
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(run_dir_module.torch, "save", full_disk_save)
    with pytest.raises(NoSpaceError) as e:
        run_dir_module.atomic_torch_save({"w": torch.zeros(3)}, path)
    assert str(e.value) == f"{path}: {NO_SPACE}"
    assert isinstance(e.value, MtlrecError)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]  # no temp file left


def test_a_full_disk_during_a_checkpoint_write_is_one_line(tmp_path):
    run_dir = tmp_path / "run"
    out = mtlrec(
        "train", *TINY, "trainer.epochs=1", f"hydra.run.dir={run_dir}", cwd=tmp_path,
        env=env(**{NO_SPACE_FAULT_ENV: "last.pt"}),
    )  # fmt: skip
    assert out.returncode == 1
    assert lines(out.stderr) == [f"{run_dir / 'checkpoints' / 'last.pt'}: {NO_SPACE}"]
    assert "Traceback" not in out.stdout
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "failed"
    assert metrics["error"] == f"{run_dir / 'checkpoints' / 'last.pt'}: {NO_SPACE}"
    assert list((run_dir / "checkpoints").iterdir()) == []  # the temp file is gone


def test_a_full_disk_at_the_start_of_a_run_is_one_line(tmp_path):
    run_dir = tmp_path / "run"
    out = mtlrec(
        "train", *TINY, "trainer.epochs=1", f"hydra.run.dir={run_dir}", cwd=tmp_path,
        env=env(**{NO_SPACE_FAULT_ENV: "metrics.json:0"}),
    )  # fmt: skip
    assert out.returncode == 1
    assert lines(out.stderr) == [f"{run_dir / 'metrics.json'}: {NO_SPACE}"]
    assert not (run_dir / "metrics.json").exists()
    # Space freed: the same command starts the run in the same dir.
    again = mtlrec("train", *TINY, "trainer.epochs=1", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert json.loads((run_dir / "metrics.json").read_text())["status"] == "completed"


def test_resume_with_a_last_pt_that_is_a_directory_is_one_line(tmp_path):
    run_dir = tmp_path / "run"
    first = mtlrec("train", *TINY, "trainer.epochs=1", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    last = run_dir / "checkpoints" / "last.pt"
    last.unlink()
    last.mkdir()
    before = (run_dir / "metrics.json").read_bytes()
    out = mtlrec("train", f"resume={run_dir}", "trainer.epochs=2", cwd=tmp_path)
    assert out.returncode == 1
    assert lines(out.stderr) == [
        f"mtlrec train: error: {last}: is a directory, not a checkpoint file; move it away and "
        "resume again"
    ]
    assert (run_dir / "metrics.json").read_bytes() == before


@pytest.mark.parametrize("kind", ["missing", "file"])
def test_config_dir_typos_are_one_line(tmp_path, kind):
    (tmp_path / "my_conf" / "dataset").mkdir(parents=True)
    (tmp_path / "my_conf" / "dataset" / "my_data.yaml").write_text("name: my_data\n")
    given = {"missing": "my_cnf", "file": "my_conf/dataset/my_data.yaml"}[kind]
    out = mtlrec("train", "--config-dir", given, "dataset=my_data", cwd=tmp_path)
    assert out.returncode == 1 and out.stdout == ""
    expected = {
        "missing": f"no such directory ({tmp_path / 'my_cnf'}); give the dir that holds your "
        "dataset/, model/, ... configs",
        "file": "is a file, not a directory; give the dir that holds your dataset/, model/, ... "
        "configs (e.g. my_conf, not my_conf/dataset/my_data.yaml)",
    }[kind]
    assert out.stderr.splitlines() == [f"mtlrec train: error: --config-dir {given}: {expected}"]
    assert not Path(tmp_path / "outputs").exists()


def test_an_unknown_dataset_in_your_config_dir_lists_yours(tmp_path):
    (tmp_path / "my_conf" / "dataset").mkdir(parents=True)
    (tmp_path / "my_conf" / "dataset" / "my_data.yaml").write_text("name: my_data\n")
    for args in (["--config-dir", "my_conf"], ["hydra.searchpath=[file://my_conf]"]):
        out = mtlrec("train", *args, "dataset=my_dat", cwd=tmp_path)
        assert out.returncode == 2  # a wrong command line
        assert out.stderr.splitlines() == [
            "mtlrec train: error: Could not find 'dataset/my_dat': unknown dataset 'my_dat'; "
            "valid: aliccp, aliexpress, census, mmoe_synthetic, movielens, my_data, prepared, synthetic_ccp, synthetic_ccp_action, synthetic_ccp_weak"
        ]


@pytest.mark.parametrize("name", ["config.yaml", "overrides.yaml"])
def test_a_full_disk_while_hydra_writes_its_config_is_one_line(tmp_path, name):
    run_dir = tmp_path / "run"
    out = mtlrec(
        "train", *TINY, "trainer.epochs=1", f"hydra.run.dir={run_dir}", cwd=tmp_path,
        env=env(**{NO_SPACE_FAULT_ENV: f"{name}:0"}),
    )  # fmt: skip
    assert out.returncode == 1
    assert lines(out.stderr) == [f"{run_dir / '.hydra' / name}: {NO_SPACE}"]
    assert "Traceback" not in out.stdout
    assert not run_dir.exists()  # the launch's .hydra files, empty train.log and dir: gone
    again = mtlrec("train", *TINY, "trainer.epochs=1", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert json.loads((run_dir / "metrics.json").read_text())["status"] == "completed"


def test_a_full_disk_while_a_resume_writes_its_config_changes_nothing(tmp_path):
    run_dir = tmp_path / "run"
    first = mtlrec("train", *TINY, "trainer.epochs=1", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    out = mtlrec(
        "train", f"resume={run_dir}", "trainer.epochs=2", cwd=tmp_path,
        env=env(**{NO_SPACE_FAULT_ENV: "config.yaml:0"}),
    )  # fmt: skip
    assert out.returncode == 1
    [line] = lines(out.stderr)
    assert line.startswith(f"{run_dir / '.hydra'}/resume-") and line.endswith(
        f"/config.yaml: {NO_SPACE}"
    )
    assert {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()} == before
    assert not list((run_dir / ".hydra").glob("resume-*"))


def test_the_atomic_hydra_writes_stand_aside_when_hydra_lacks_its_private_helper(monkeypatch):
    """`_save_config` is Hydra 1.3's private writer: without it the launch goes on unprotected
    (Hydra's own writes) instead of failing on an AttributeError."""
    import hydra.core.utils as hydra_utils

    from mtlrec.commands.train import atomic_hydra_configs

    monkeypatch.delattr(hydra_utils, "_save_config")
    ran = []
    with atomic_hydra_configs():
        ran.append(hasattr(hydra_utils, "_save_config"))
    assert ran == [False]
