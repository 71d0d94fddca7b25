"""Helpers for the sweep / compare / plot / logger tests: the real CLI in a subprocess, and
hand-written run dirs (the files `mtlrec train` writes, with chosen values) for exact checks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

TINY_CLI = [
    "dataset.num_rows=4000",
    "trainer.num_threads=1",
    "device=cpu",
    "trainer.batch_size=256",
]


def mtlrec(*args: str, cwd: Path, timeout: int = 240) -> subprocess.CompletedProcess:
    """`mtlrec ARGS` in a fresh Python process (inherits MTLREC_DATA_DIR from the test session)."""
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE", HYDRA_FULL_ERROR="0")
    return subprocess.run(
        [sys.executable, "-m", "mtlrec", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def write_run(
    path: Path,
    config: dict,
    metrics: dict | None = None,
    status: str = "completed",
    history: list[dict] | None = None,
    overrides: list[str] | None = None,
    error: str | None = None,
    monitor: str = "val/mean_auc",
) -> Path:
    """A run dir as `mtlrec train` leaves it: .hydra/config.yaml + overrides.yaml, metrics.json,
    history.csv (only the files compare/plots read)."""
    (path / ".hydra").mkdir(parents=True)
    (path / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    (path / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides or []))
    info = {"status": status, "seed": config.get("seed"), "error": error}
    if status == "completed":
        info.update(
            monitor=monitor,
            monitor_mode="max",
            best_epoch=len(history or [1]),
            epochs_run=len(history or [1]),
            metrics=metrics or {},
            wall_seconds=2.0,
            train_samples_per_s=1000.0,
        )
    (path / "metrics.json").write_text(json.dumps(info))
    if history:
        columns = list(history[0])
        lines = [",".join(columns)] + [",".join(str(r[c]) for c in columns) for r in history]
        (path / "history.csv").write_text("\n".join(lines) + "\n")
    return path


def base_config(**changes) -> dict:
    cfg = {
        "model": {"name": "mmoe", "num_experts": 2, "expert_dims": [8], "tower_dims": [4]},
        "dataset": {"name": "synthetic_ccp", "num_rows": 4000, "path": "${data_dir}/x"},
        "trainer": {"lr": 0.001, "epochs": 2},
        "seed": 1,
        "data_order_seed": "${seed}",
        "data_dir": "/tmp/data",
    }
    for dotted, value in changes.items():
        node = cfg
        *parents, last = dotted.split("__")
        for p in parents:
            node = node[p]
        node[last] = value
    return cfg


def assert_real_png(path, min_width=400):
    """A real picture: big enough, not blank, many colours (read back with matplotlib)."""
    from matplotlib import image

    pixels = image.imread(path)
    height, width = pixels.shape[:2]
    assert width >= min_width and height >= 250, (path, pixels.shape)
    rgb = pixels[..., :3].reshape(-1, 3)
    assert rgb.std() > 0.05, f"{path}: (nearly) blank image"
    colours = {tuple(c) for c in (rgb[:: max(1, len(rgb) // 20000)] * 255).astype(int).tolist()}
    assert len(colours) > 20, f"{path}: only {len(colours)} colours"
    return pixels
