"""Resume through the real CLI: a refused resume changes nothing, wall time adds up over the
sessions, a run stopped before its first checkpoint starts again in its dir, and a run on your
own data (--config-dir / hydra.searchpath) resumes with the command the interruption prints."""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import sys
from pathlib import Path

from conftest import TINY
from helpers.cli import env, lines, mtlrec

from .test_signals import _default_signals, _start, _wait_for

sys.path.insert(0, str(Path(__file__).parents[1] / "data"))
from test_byo_csv import readme_example, write_events_csv  # noqa: E402


def _files(run_dir: Path) -> dict[str, str]:
    """Every file of the run dir (lock file aside) -> its SHA-256."""
    return {
        str(p.relative_to(run_dir)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(run_dir.rglob("*"))
        if p.is_file() and p.name != ".mtlrec.lock"
    }


def _metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


def test_a_refused_resume_changes_nothing_and_wall_time_adds_up(tmp_path):
    run_dir = tmp_path / "run"
    first = mtlrec("train", *TINY, "trainer.epochs=1", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    before = _files(run_dir)
    wall = _metrics(run_dir)["wall_seconds"]

    refused = mtlrec("train", f"resume={run_dir}", "model=mmoe", cwd=tmp_path)
    assert refused.returncode == 1
    assert lines(refused.stderr) == [
        f"resume={run_dir}/checkpoints/last.pt: the override(s) model.name='mmoe' (was 'esmm'), "
        "model.tower_dims=[32] (was [64, 32]) differ from the run's config; with resume only "
        "trainer.epochs, trainer.progress, trainer.num_threads, trainer.devices and checkpoint.* "
        "may change (start a new run for anything else)"
    ]
    assert _files(run_dir) == before  # metrics.json, train.log, .hydra/: byte for byte
    assert not list((run_dir / ".hydra").glob("resume-*"))

    # Resuming the completed run: accepted, re-tested; its wall time is the sum of both sessions.
    again = mtlrec("train", f"resume={run_dir}", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    after = _metrics(run_dir)
    assert after["status"] == "completed" and after["error"] is None
    assert after["earlier_wall_seconds"] == wall
    assert after["wall_seconds"] > wall


def test_a_run_that_failed_before_its_first_checkpoint_starts_again_in_its_dir(tmp_path):
    run_dir = tmp_path / "run"
    # a task selection a funnel model cannot train: refused inside the run (tasks the data does
    # not have are refused before any run dir exists)
    bad = ["model=esmm", "dataset.tasks=[ctr]"]
    failed = mtlrec("train", *TINY, *bad, f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert failed.returncode == 1
    assert _metrics(run_dir)["status"] == "failed"
    assert not (run_dir / "checkpoints").exists()

    again = mtlrec("train", *TINY, "trainer.epochs=1", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert (
        f"{run_dir}: starting the run again (the one there, status failed, stopped before its "
        "first checkpoint)"
    ) in lines(again.stderr)
    metrics = _metrics(run_dir)
    assert metrics["status"] == "completed" and metrics["epochs_run"] == 1
    assert "dataset.tasks" not in (run_dir / ".hydra" / "overrides.yaml").read_text()


def test_a_run_killed_before_its_first_checkpoint_resumes_from_scratch(tmp_path):
    run_dir = tmp_path / "run"
    proc = _start(["train", *TINY, "trainer.epochs=1", f"hydra.run.dir={run_dir}"], tmp_path)
    try:  # killed once metrics.json says running: before any checkpoint
        _wait_for((run_dir / "metrics.json").exists, proc, "metrics.json")
        proc.kill()
        proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not (run_dir / "checkpoints" / "last.pt").exists()
    assert _metrics(run_dir)["status"] == "running"

    resumed = mtlrec("train", f"resume={run_dir}", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert (
        f"{run_dir}: starting the run again (the one there, status running, stopped before its "
        "first checkpoint)"
    ) in lines(resumed.stderr)
    metrics = _metrics(run_dir)
    assert metrics["status"] == "completed" and metrics["epochs_run"] == 1


def _byo(tmp_path: Path) -> dict[str, str]:
    """The README's own-data example, prepared into this test's own data dir; its environment."""
    own = env(MTLREC_DATA_DIR=str(tmp_path / "cache"))
    (tmp_path / "my_conf" / "dataset").mkdir(parents=True)
    (tmp_path / "my_conf" / "dataset" / "my_data.yaml").write_text(readme_example())
    write_events_csv(tmp_path / "data" / "events.csv", n=3000)
    done = mtlrec("prepare", "--config-dir", "my_conf", "dataset=my_data", cwd=tmp_path, env=own)
    assert done.returncode == 0, done.stderr
    return own


def _interrupt_and_resume(tmp_path: Path, config_args: list[str], own: dict) -> None:
    run_dir = tmp_path / "run"
    args = [
        "train", *config_args, "dataset=my_data", "trainer.epochs=3", "trainer.batch_size=32",
        "checkpoint.every_n_steps=5", "trainer.num_threads=1", "device=cpu",
        f"hydra.run.dir={run_dir}",
    ]  # fmt: skip
    proc = subprocess.Popen(
        [sys.executable, "-m", "mtlrec", *args], cwd=tmp_path, env=own, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=_default_signals,
    )  # fmt: skip
    try:
        _wait_for((run_dir / "checkpoints" / "last.pt").exists, proc, "checkpoint")
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, err
    hint = f"continue with: mtlrec train resume={run_dir}"
    assert any(ln.endswith(hint) for ln in lines(out + err)), out + err
    assert _metrics(run_dir)["status"] == "interrupted"

    elsewhere = tmp_path / "elsewhere"  # the printed command works from any working dir
    elsewhere.mkdir()
    resumed = mtlrec("train", f"resume={run_dir}", cwd=elsewhere, env=own)
    assert resumed.returncode == 0, resumed.stderr
    metrics = _metrics(run_dir)
    assert metrics["status"] == "completed" and metrics["dataset"] == "my_data"
    assert metrics["epochs_run"] == 3


def test_a_byo_run_started_with_config_dir_resumes_with_the_printed_command(tmp_path):
    _interrupt_and_resume(tmp_path, ["--config-dir", "my_conf"], _byo(tmp_path))


def test_a_byo_run_started_with_a_searchpath_resumes_with_the_printed_command(tmp_path):
    _interrupt_and_resume(tmp_path, ["hydra.searchpath=[file://my_conf]"], _byo(tmp_path))
