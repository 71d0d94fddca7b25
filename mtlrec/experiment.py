"""One training run, from a composed config to a complete run directory.

`run(cfg, run_dir)` is what `mtlrec train` calls inside its Hydra job; tests call it directly with
a config from `compose()`. It returns the best value of the monitored validation metric (what
Hydra sweepers optimize).
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import os
import platform
import random
import socket
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.table import Table

import mtlrec
from mtlrec.data.datasets import resolve_dataset_dir
from mtlrec.data.loader import load_splits
from mtlrec.data.spec import DatasetSpec
from mtlrec.errors import MtlrecError
from mtlrec.models import build_model
from mtlrec.runs.run_dir import ENV_FILE, RunDir
from mtlrec.training.checkpoint import make_payload
from mtlrec.training.metrics import eval_targets
from mtlrec.training.trainer import Trainer, TrainerConfig, strip_gates

log = logging.getLogger("mtlrec")


def resolve_device(device_cfg: Any) -> torch.device:
    kind = str(device_cfg.get("type", "auto"))
    index = int(device_cfg.get("index", 0) or 0)
    if kind not in ("auto", "cpu", "cuda"):
        raise MtlrecError(f"device.type '{kind}' is unknown; use auto, cpu or cuda")
    if kind == "cpu" or (kind == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise MtlrecError(
            "device=cuda but no CUDA GPU is visible to torch (torch.cuda.is_available() is False); use device=cpu or device=auto"
        )
    if index >= torch.cuda.device_count():
        raise MtlrecError(
            f"device.index={index} but only {torch.cuda.device_count()} CUDA device(s) are visible"
        )
    return torch.device("cuda", index)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def environment(device: torch.device) -> dict[str, Any]:
    import hydra
    import pandas
    import pyarrow
    import sklearn

    env = {
        "mtlrec": mtlrec.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "hostname": socket.gethostname(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "pandas": pandas.__version__,
        "pyarrow": pyarrow.__version__,
        "scikit-learn": sklearn.__version__,
        "hydra-core": hydra.__version__,
        "device": str(device),
        "cuda_available": torch.cuda.is_available(),
        "torch_num_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "argv": sys.argv,
    }
    if device.type == "cuda":
        env["cuda_device_name"] = torch.cuda.get_device_name(device)
        env["cuda_version"] = torch.version.cuda
    return env


def place_splits(splits: dict, device: torch.device) -> dict:
    """Move whole splits to the GPU when they fit comfortably; else pin them for async copies."""
    if device.type != "cuda":
        return splits
    total = sum(s.nbytes for s in splits.values())
    free, _ = torch.cuda.mem_get_info(device)
    if total < 0.5 * free:
        log.info("data: %.1f MiB moved to %s once", total / 2**20, device)
        return {k: s.to(device) for k, s in splits.items()}
    log.info(
        "data: %.1f MiB stays in pinned host memory (GPU has %.1f MiB free)",
        total / 2**20,
        free / 2**20,
    )
    return {k: s.pin_memory() for k, s in splits.items()}


def print_metrics_table(console: Console, val: dict[str, float], test: dict[str, float]) -> None:
    table = Table(title="metrics at the best epoch")
    table.add_column("metric")
    table.add_column("val", justify="right")
    table.add_column("test", justify="right")
    names = sorted({k.split("/", 1)[1] for k in list(val) + list(test)})
    for name in names:
        v, t = val.get(f"val/{name}", math.nan), test.get(f"test/{name}", math.nan)
        table.add_row(name, f"{v:.5f}", f"{t:.5f}")
    console.print(table)


def run(cfg: DictConfig, run_dir_path: str | Path) -> float:
    """Train, validate, test; write the run directory. Returns the best monitored value."""
    run_dir = RunDir(run_dir_path)
    started = time.time()
    run_dir.update_metrics(
        status="running",
        seed=int(cfg.seed),
        data_order_seed=int(cfg.data_order_seed),
        started_at=dt.datetime.now().isoformat(timespec="seconds"),
        error=None,
    )
    try:
        return _run(cfg, run_dir, started)
    except KeyboardInterrupt:
        run_dir.update_metrics(
            status="interrupted",
            error="interrupted by the user",
            wall_seconds=time.time() - started,
        )
        raise
    except MtlrecError as e:
        run_dir.update_metrics(status="failed", error=str(e), wall_seconds=time.time() - started)
        log.error("%s", e)
        raise
    except Exception as e:
        run_dir.update_metrics(
            status="failed", error=f"{type(e).__name__}: {e}", wall_seconds=time.time() - started
        )
        raise


def _run(cfg: DictConfig, run_dir: RunDir, started: float) -> float:
    config = OmegaConf.to_container(cfg, resolve=True)
    trainer_cfg = TrainerConfig(**config["trainer"])
    trainer_cfg.validate()
    if trainer_cfg.num_threads is not None:
        torch.set_num_threads(trainer_cfg.num_threads)
    device = resolve_device(config["device"])
    seed_everything(int(cfg.seed))

    data_dir = resolve_dataset_dir(config["dataset"])
    spec = DatasetSpec.load(data_dir)
    selected = spec.select_tasks(config["dataset"].get("tasks"))
    model, loss_tasks = build_model(config["model"], spec, selected)
    model.to(device)
    targets = eval_targets(loss_tasks, model.output_types, spec)
    splits = place_splits(load_splits(data_dir, spec, tuple(t.task for t in targets)), device)
    run_dir.write_json(ENV_FILE, environment(device))

    n_params = sum(p.numel() for p in model.parameters())
    log.info("run dir: %s", run_dir.path)
    log.info(
        "model %s (%s parameters) on %s, %d torch thread(s); dataset %s at %s",
        config["model"]["name"],
        f"{n_params:,}",
        device,
        torch.get_num_threads(),
        spec.name,
        data_dir,
    )
    log.info(
        "rows: %s; tasks: %s",
        ", ".join(f"{k} {len(v):,}" for k, v in splits.items()),
        ", ".join(
            f"{t.name}({t.label}{', where ' + t.where if t.where else ''}, w={t.weight:g})"
            for t in loss_tasks
        ),
    )

    console = Console(stderr=False)
    trainer = Trainer(
        model, spec, loss_tasks, targets, trainer_cfg, device, int(cfg.data_order_seed), console
    )
    history: list[dict[str, Any]] = []

    def on_epoch_end(row: dict, is_best: bool, state: dict) -> None:
        history[:] = state["history"]
        run_dir.write_history(history)
        payload = make_payload(
            model,
            trainer.optimizer,
            config,
            spec,
            loss_tasks,
            row["epoch"],
            history=list(history),
            early_stopping=state["early_stopping"],
            monitor=trainer.monitor,
        )
        run_dir.save_checkpoint("last.pt", payload)
        if is_best or row["epoch"] == 1:
            run_dir.save_checkpoint("best.pt", payload)

    result = trainer.fit(splits, on_epoch_end)
    best_row = next(r for r in result.history if r["epoch"] == result.best_epoch)
    val_metrics = {k: v for k, v in strip_gates(best_row).items() if k.startswith("val/")}
    t_eval = time.perf_counter()
    test_metrics = strip_gates(trainer.evaluate(splits["test"], "test"))
    eval_seconds = time.perf_counter() - t_eval
    run_dir.update_metrics(
        status="completed",
        error=None,
        model=config["model"]["name"],
        dataset=spec.name,
        monitor=trainer.monitor,
        monitor_mode=trainer.mode,
        best_epoch=result.best_epoch,
        best_value=result.best_value,
        epochs_run=len(result.history),
        stopped_early=result.stopped_early,
        metrics={**val_metrics, **test_metrics},
        wall_seconds=time.time() - started,
        train_samples_per_s=result.train_samples_per_s,
        eval_samples_per_s=len(splits["test"]) / eval_seconds if eval_seconds > 0 else None,
        num_parameters=n_params,
        device=str(device),
        num_threads=torch.get_num_threads(),
    )
    print_metrics_table(console, val_metrics, test_metrics)
    log.info("test: %s", "  ".join(f"{k}={v:.5f}" for k, v in sorted(test_metrics.items())))
    return float(result.best_value)
