"""The process a run trains in: device, seeds, determinism, memory check, environment record.

experiment.setup_process and experiment.build call these; they hold no state of their own.
"""

from __future__ import annotations

import logging
import math
import os
import platform
import random
import socket
import sys
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

import mtlrec
from mtlrec.errors import MtlrecError
from mtlrec.settings import DeviceConfig


def resolve_device(device_cfg: DeviceConfig | dict[str, Any]) -> torch.device:
    if isinstance(device_cfg, dict):
        from mtlrec.config_schema import build

        device_cfg = build(DeviceConfig, device_cfg, "device")
    kind, index = device_cfg.type, device_cfg.index
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


def _version(package: str) -> str | None:
    """An installed package's version without importing it (scikit-learn takes a second)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None


def environment(device: torch.device) -> dict[str, Any]:
    import hydra
    import pyarrow

    env = {
        "mtlrec": mtlrec.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "hostname": socket.gethostname(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "pandas": _version("pandas"),  # its metadata: importing pandas costs ~0.3 s
        "pyarrow": pyarrow.__version__,
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


def in_sweep() -> bool:
    """This process runs one job of a Hydra multirun (a sweep)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def print_job_line(
    console: Console, best: tuple[int, int], monitor: str, val: dict, test: dict
) -> None:
    """A sweep job's result in one line (the sweep prints the table of all jobs at its end)."""
    family = monitor.replace("val/", "test/", 1)
    shown = f"  {family} {test[family]:.5f}" if family in test else ""
    value = val.get(monitor, math.nan)
    console.print(f"job done: best epoch {best[0]} of {best[1]}  {monitor} {value:.5f}{shown}")


def print_metrics_table(
    console: Console, val: dict[str, float], test: dict[str, float], best: tuple[int, int]
) -> None:
    """val and test metrics at the best epoch (best = (best epoch, epochs run)), one row each."""
    table = Table(title=f"metrics at the best epoch ({best[0]} of {best[1]})")
    table.add_column("metric")
    table.add_column("val", justify="right")
    table.add_column("test", justify="right")
    names = sorted({k.split("/", 1)[1] for k in list(val) + list(test)})
    for name in names:
        v, t = val.get(f"val/{name}", math.nan), test.get(f"test/{name}", math.nan)
        table.add_row(name, f"{v:.5f}", f"{t:.5f}")
    console.print(table)


def set_deterministic(on: bool) -> None:
    """trainer.deterministic: PyTorch's deterministic algorithms (they matter on GPUs; CPU kernels
    used here are deterministic already). cuBLAS needs a fixed workspace for reproducible GEMMs."""
    if on:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(on)
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = on


def check_embedding_memory(
    model: torch.nn.Module, choice: str, device: torch.device, sharded_over: int = 1
) -> str:
    """Tables + optimizer state against the device's free memory, before either is allocated
    there (on the CPU the tables exist already, but for meta ones: only their optimizer state is
    still to come).
    `sharded_over` > 1: TorchRec splits the tables over that many ranks, no rank holds them
    whole; its planner checks each rank's part against the rank's budget (one line if none
    fits), so the whole tables are not held against one device here."""
    from mtlrec.training.optimizers import check_fits, embedding_tables, free_memory, table_bytes

    if sharded_over > 1:
        weights, _ = table_bytes(model, choice)  # type: ignore[arg-type]
        return (
            f"embedding tables {weights / 2**20:,.1f} MiB, placed on {sharded_over} ranks by "
            "TorchRec's planner (trainer.sharding, trainer.shard_memory_mb)"
        )
    free = free_memory(device)
    if device.type == "cpu":  # the tables allocated already (a meta one, drawn in its shards
        # later: training/torchrec_init.py, is still to come)
        free += sum(
            t.weight.numel() * t.weight.element_size()
            for t in embedding_tables(model)
            if not t.weight.is_meta
        )
    return check_fits(model, choice, free, str(device))  # type: ignore[arg-type]


def warn_if_still_improving(result: Any, trainer_cfg: Any, monitor: str) -> None:
    """The best epoch is the last one and the run was not stopped early: it may be under-trained."""
    last = result.history[-1]["epoch"] if result.history else 0
    if result.stopped_early or last != result.best_epoch or last < trainer_cfg.epochs:
        return
    logging.getLogger("mtlrec").warning(
        "%s was still improving at the last epoch (%d); try trainer.epochs=%d",
        monitor,
        last,
        max(2 * last, last + 5),
    )
