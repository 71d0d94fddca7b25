"""Shared fixtures: tiny generated datasets, composed configs, short training runs."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_module
from omegaconf import DictConfig

TINY_ROWS = 4000  # big enough for every split to hold clicks and conversions

# End-to-end tests that start several real processes (sweeps, studies, DDP ranks, signals, locks
# raced between processes): `slow`. `pytest -q` skips them (under 4 minutes on an idle 2-core
# machine); `pytest -q -m "slow or not slow"` (what .ci/run runs) includes them.
SLOW_MODULES = (
    "tuning/test_tune.py",
    "sweeps/test_sweep_signals.py",
    "runs/test_run_dir_ownership.py",
    "sweeps/test_sweeps.py",
    "training/test_distributed.py",
    "training/test_distributed_balance.py",
    "commands/test_signals.py",
    "commands/test_terminal.py",
    "data/test_census.py",
    "data/test_publish.py",
    "sweeps/test_sweep_resume.py",
    "loggers/test_mlflow_cli.py",
    "commands/test_resume_cli.py",
    "commands/test_faults_cli.py",
    "commands/test_progress_bars.py",
)
SLOW_TESTS = (
    "data/test_byo_csv.py::test_readme_example_prepares_and_trains_through_the_cli",
    "test_resume_record.py::test_refused_resume_leaves_the_run_record_and_the_next_resume_alone",
    "training/test_resume.py::test_sigint_mid_epoch_then_resume_matches_uninterrupted_run",
    "data/test_streaming.py::test_training_streamed_through_the_cli_with_a_small_buffer",
    "models/test_chain_models.py::test_aitm_cli_subprocess_logs_calibrator_and_weights",
    "commands/test_cli.py::test_an_existing_run_is_never_overwritten",
    "commands/test_cli.py::test_the_wheel_ships_the_configs",
)


def pytest_collection_modifyitems(config, items):
    root = Path(__file__).parent
    for item in items:
        where = Path(str(item.fspath)).relative_to(root).as_posix()
        test = f"{where}::{item.name.split('[')[0]}"
        if where in SLOW_MODULES or test in SLOW_TESTS:
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session", autouse=True)
def _isolated_data_dir(tmp_path_factory):
    """Tests never touch ~/.cache: generated datasets go to a session temp dir."""
    data_dir = tmp_path_factory.mktemp("mtlrec-data")
    old = os.environ.get("MTLREC_DATA_DIR")
    os.environ["MTLREC_DATA_DIR"] = str(data_dir)
    torch.set_num_threads(1)
    yield data_dir
    if old is None:
        os.environ.pop("MTLREC_DATA_DIR", None)
    else:
        os.environ["MTLREC_DATA_DIR"] = old


def compose_train(overrides: list[str] | None = None) -> DictConfig:
    """The composed `mtlrec train` config, as Hydra would build it (no run dir, no subprocess)."""
    with initialize_config_module(config_module="mtlrec.conf", version_base="1.3"):
        return compose(
            config_name="train", overrides=list(overrides or []), return_hydra_config=False
        )


TINY = [
    f"dataset.num_rows={TINY_ROWS}",
    "trainer.epochs=2",
    "trainer.batch_size=256",
    "trainer.num_threads=1",
    "device=cpu",
]


def run_training(
    tmp_path: Path, overrides: list[str] | None = None, name: str = "run"
) -> tuple[Path, dict]:
    """Train in-process on the tiny dataset; returns (run dir, metrics.json)."""
    from mtlrec.experiment import run

    overrides = list(overrides or [])
    base = TINY
    if any(
        o.startswith("dataset=") for o in overrides
    ):  # another dataset: its own keys, not num_rows
        base = [o for o in TINY if not o.startswith("dataset.")]
    cfg = compose_train(base + overrides)
    run_dir = tmp_path / name
    run(cfg, run_dir)
    return run_dir, json.loads((run_dir / "metrics.json").read_text())


@pytest.fixture
def train_tiny(tmp_path):
    def _train(overrides=None, name="run"):
        return run_training(tmp_path, overrides, name)

    return _train


@pytest.fixture
def best_loads(monkeypatch) -> list[dict]:
    """What each fit's end loads as the best weights (mtlrec/training/best_files.py): the keys
    held as placeholders, the keys the files hold, the rows restored from the files and the rows
    of those tables."""
    from mtlrec.training import best_files

    seen: list[dict] = []
    load, restore = best_files.load, best_files.BestFiles.restore

    def spy_load(model, best, files, chain=None, holding=None):
        seen.append({"held": best_files.by_files(best), "keys": files.keys if files else None})
        seen[-1]["chain"] = chain  # None: the best epoch's
        return load(model, best, files, chain, holding)

    def spy_restore(self, keys, chain=None, holding=None):
        seen[-1]["rows"] = restore(self, keys, chain, holding)
        seen[-1]["table_rows"] = sum(self.weights[k][0].shape[0] for k in keys)
        return seen[-1]["rows"]

    monkeypatch.setattr(best_files, "load", spy_load)
    monkeypatch.setattr(best_files.BestFiles, "restore", spy_restore)
    return seen
