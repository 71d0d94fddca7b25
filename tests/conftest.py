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
