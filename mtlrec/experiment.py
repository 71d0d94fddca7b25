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
from mtlrec.data.streaming import StreamingSplit
from mtlrec.errors import MtlrecError
from mtlrec.models import build_model
from mtlrec.runs.loggers import build_logger
from mtlrec.runs.run_dir import ENV_FILE, RESUME_ACCEPTED, RunDir
from mtlrec.runs.sweep import job_thread_share
from mtlrec.training import distributed
from mtlrec.training.checkpoint import (
    BEST,
    check_compatible,
    load_resumable,
    load_weights,
    make_payload,
    save_last,
)
from mtlrec.training.metrics import eval_targets
from mtlrec.training.signals import StopRequest, TrainingInterrupted, shielded
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


def load_data(ds: dict, data_dir: Path, spec: DatasetSpec, tasks: tuple, device: torch.device):
    """Splits ready for the trainer; with dataset.streaming=true the train split is streamed."""
    if not ds.get("streaming", False):
        return place_splits(load_splits(data_dir, spec, tasks), device)
    if "train" not in spec.splits:
        raise MtlrecError(f"{data_dir / 'spec.json'}: no 'train' split to stream")
    train = StreamingSplit(
        data_dir / spec.splits["train"],
        spec,
        tasks,
        shuffle_buffer=ds.get("shuffle_buffer", 262_144),
        prefetch=ds.get("prefetch", 4),
        read_rows=ds.get("read_rows", 65_536),
    )
    log.info(
        "data: train streamed from %s (%s rows, %d row groups; shuffle buffer %s rows)",
        train.path,
        f"{len(train):,}",
        train.num_row_groups,
        f"{train.shuffle_buffer:,}",
    )
    return {
        "train": train,
        **place_splits(load_splits(data_dir, spec, tasks, ("val", "test")), device),
    }


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


# What `mtlrec train resume=RUN_DIR ...` may change: everything else must equal the original run's
# config (the resume continues the same experiment). trainer.epochs may grow to train longer.
RESUME_MAY_CHANGE = (
    "resume",
    "data_dir",
    "dataset.path",
    "trainer.epochs",
    "trainer.progress",
    "trainer.num_threads",
    "trainer.nan_check_every",
    "trainer.devices",  # epoch-end checkpoints only (distributed.check_resume_world)
    "checkpoint.",
)


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix[:-1]: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flatten(v, f"{prefix}{k}."))
    return out


def check_resume_config(original: dict, new: dict, path: Path) -> None:
    """Only RESUME_MAY_CHANGE keys may differ from the run's saved config (keys in both)."""
    a, b = _flatten(original), _flatten(new)
    changed = [
        k
        for k in sorted(set(a) & set(b))
        if a[k] != b[k] and not any(k == m or k.startswith(m) for m in RESUME_MAY_CHANGE if m)
    ]
    if changed:
        shown = ", ".join(f"{k}={b[k]!r} (was {a[k]!r})" for k in changed[:4])
        raise MtlrecError(
            f"resume={path}: the override(s) {shown} differ from the run's config; with resume only "
            "trainer.epochs, trainer.progress, trainer.num_threads, trainer.devices and "
            "checkpoint.* may change "
            "(start a new run for anything else)"
        )


def run(cfg: DictConfig, run_dir_path: str | Path) -> float:
    """Train, validate, test; write the run directory. Returns the best monitored value.

    With `cfg.resume` set, continue the run in `run_dir_path` from its last complete checkpoint.
    """
    if distributed.should_spawn(cfg):  # trainer.devices=N: N ranks run this function; we wait
        return distributed.spawn(run, cfg, run_dir_path)
    rank = distributed.process_rank()
    run_dir = RunDir(run_dir_path, read_only=not rank.is_main)  # rank 0 alone writes
    started = time.time()
    resume = OmegaConf.select(cfg, "resume", default=None)
    if resume:
        if Path(str(resume)).expanduser().resolve() != run_dir.path.resolve():
            raise MtlrecError(
                f"resume={resume} but the run dir is {run_dir.path}; use `mtlrec train "
                f"resume={resume}` (it sets hydra.run.dir) or set hydra.run.dir={resume}"
            )
        run_dir.update_metrics(
            status="running", resumed_at=dt.datetime.now().isoformat(timespec="seconds")
        )
    else:
        run_dir.update_metrics(
            status="running",
            seed=int(cfg.seed),
            data_order_seed=int(cfg.data_order_seed),
            started_at=dt.datetime.now().isoformat(timespec="seconds"),
            error=None,
        )
    try:
        with StopRequest() as stop:
            return _run(cfg, run_dir, started, stop)
    except (TrainingInterrupted, KeyboardInterrupt) as e:
        if isinstance(e, KeyboardInterrupt):  # a second signal: stopped at once, no new checkpoint
            e = TrainingInterrupted("stopped at once by a second signal", 2)
        with shielded():
            run_dir.update_metrics(
                status="interrupted", error=str(e), wall_seconds=time.time() - started
            )
            log.warning("%s; continue with: mtlrec train resume=%s", e, run_dir.path)
        raise e from None
    except MtlrecError as e:
        run_dir.update_metrics(status="failed", error=str(e), wall_seconds=time.time() - started)
        log.error("%s", e)
        raise
    except Exception as e:
        run_dir.update_metrics(
            status="failed", error=f"{type(e).__name__}: {e}", wall_seconds=time.time() - started
        )
        raise


def mark_resume_accepted(run_dir: Path) -> None:
    """Mark this resume attempt's .hydra/resume-*/ dir as accepted: the next resume replays its
    overrides (cli.translate_resume). A refused attempt leaves no mark, so it changes nothing."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():  # called in-process, without a Hydra job
        return
    subdir = HydraConfig.get().output_subdir
    if subdir and Path(subdir).name.startswith("resume-"):
        (run_dir / subdir / RESUME_ACCEPTED).write_text("")


def set_deterministic(on: bool) -> None:
    """trainer.deterministic: PyTorch's deterministic algorithms (they matter on GPUs; CPU kernels
    used here are deterministic already). cuBLAS needs a fixed workspace for reproducible GEMMs."""
    if on:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(on)
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = on


def _run(cfg: DictConfig, run_dir: RunDir, started: float, stop: StopRequest) -> float:
    config = OmegaConf.to_container(cfg, resolve=True)
    resume_payload, resume_path = None, None
    if config.get("resume"):
        resume_payload, resume_path = load_resumable(run_dir.checkpoints)
        if "train_state" not in resume_payload:
            raise MtlrecError(
                f"{resume_path}: checkpoint has no training state (written by an older mtlrec); "
                "it cannot be resumed, start a new run"
            )
        check_resume_config(resume_payload["config"], config, resume_path)
        log.info(
            "resuming from %s (epoch %s%s)",
            resume_path,
            resume_payload["train_state"]["epoch"],
            ""
            if resume_payload["train_state"]["step"] is None
            else f" step {resume_payload['train_state']['step']}",
        )
    trainer_cfg = TrainerConfig(**config["trainer"])
    trainer_cfg.validate()
    ckpt_cfg = dict(config.get("checkpoint") or {})
    every = ckpt_cfg.get("every_n_steps")
    if every is not None and (isinstance(every, bool) or not isinstance(every, int) or every < 1):
        raise MtlrecError(
            f"checkpoint.every_n_steps must be an integer >= 1 or null, got {every!r}"
        )
    if trainer_cfg.num_threads is not None:
        torch.set_num_threads(trainer_cfg.num_threads)
    elif (share := job_thread_share()) is not None:
        torch.set_num_threads(share)  # a parallel sweep job: its share of the cores (runs/sweep.py)
    device = resolve_device(config["device"])
    device = distributed.setup(device, config, trainer_cfg.num_threads is not None, run_dir.path)
    set_deterministic(bool(trainer_cfg.deterministic))
    seed_everything(int(cfg.seed))

    with distributed.main_first():  # rank 0 generates a missing dataset, then the others read it
        data_dir = resolve_dataset_dir(config["dataset"])
    spec = DatasetSpec.load(data_dir)
    selected = spec.select_tasks(config["dataset"].get("tasks"))
    model, loss_tasks = build_model(config["model"], spec, selected)
    model.to(device)
    targets = eval_targets(loss_tasks, model.output_types, spec)
    splits = load_data(config["dataset"], data_dir, spec, tuple(t.task for t in targets), device)
    splits = distributed.shard_streaming(splits, trainer_cfg.batch_size)  # ranks: own row groups
    ranks = distributed.current()
    parallel = ranks.describe(trainer_cfg.batch_size)
    run_dir.write_json(ENV_FILE, {**environment(device), "distributed": parallel})
    metric_logger = build_logger(
        config.get("logger") if ranks.is_main else None, run_dir.path, config
    )
    if ranks.active:
        log.info(
            "data parallel: %d rank(s) (%s, %s), batch %d per rank, effective batch %d",
            ranks.world_size,
            ranks.launcher,
            ranks.backend,
            trainer_cfg.batch_size,
            parallel["effective_batch_size"],
        )

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
        model,
        spec,
        loss_tasks,
        targets,
        trainer_cfg,
        device,
        int(cfg.data_order_seed),
        console,
        balance=config.get("balance"),
    )
    history: list[dict[str, Any]] = []

    def payload_of(state: dict) -> dict:
        return make_payload(
            model,
            trainer.optimizer,
            config,
            spec,
            loss_tasks,
            state["epoch"],
            step=state["step"],
            history=state["history"],
            early_stopping=state["early_stopping"],
            monitor=trainer.monitor,
            seed=int(cfg.seed),
            data_order_seed=int(cfg.data_order_seed),
            train_state=state,
        )

    def on_checkpoint(state: dict) -> str:
        path = save_last(run_dir.checkpoints, payload_of(state), _write_checkpoint)
        return str(path.relative_to(run_dir.path))

    def on_epoch_end(row: dict, is_best: bool, state: dict) -> None:
        history[:] = state["history"]
        run_dir.write_history(history)
        metric_logger.log_epoch(row)
        payload = payload_of(state)
        save_last(run_dir.checkpoints, payload, _write_checkpoint)
        if is_best or row["epoch"] == 1:
            run_dir.save_checkpoint(BEST, payload)

    def _write_checkpoint(payload: dict, path: Path) -> None:
        run_dir.save_checkpoint(path.name, payload)

    trainer.stop = stop
    trainer.checkpoint_every = every
    trainer.on_checkpoint = on_checkpoint if ranks.is_main else None
    resume_state = None
    if resume_payload is not None:
        check_compatible(resume_payload, resume_path, config["model"]["name"], spec)
        load_weights(model, resume_payload["model_state"], resume_path)
        try:
            trainer.optimizer.load_state_dict(resume_payload["optimizer_state"])
        except (ValueError, KeyError) as e:
            raise MtlrecError(
                f"{resume_path}: optimizer state does not fit the model ({e})"
            ) from None
        resume_state = resume_payload["train_state"]
        distributed.check_resume_world(resume_state, resume_path)
        history[:] = resume_state["history"]
        if ranks.is_main:
            mark_resume_accepted(run_dir.path)
    try:
        result = trainer.fit(splits, on_epoch_end if ranks.is_main else None, resume=resume_state)
    except BaseException as e:
        interrupted = isinstance(e, (KeyboardInterrupt, TrainingInterrupted))
        metric_logger.finish("interrupted" if interrupted else "failed")
        raise
    best_row = next(r for r in result.history if r["epoch"] == result.best_epoch)
    val_metrics = {k: v for k, v in strip_gates(best_row).items() if k.startswith("val/")}
    t_eval = time.perf_counter()
    test_metrics = strip_gates(trainer.evaluate(splits["test"], "test"))
    eval_seconds = time.perf_counter() - t_eval
    final = run_dir.update_metrics(
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
        world_size=ranks.world_size,
        effective_batch_size=parallel["effective_batch_size"],
    )
    metric_logger.finish("completed", final)
    if ranks.is_main:
        print_metrics_table(console, val_metrics, test_metrics)
    log.info("test: %s", "  ".join(f"{k}={v:.5f}" for k, v in sorted(test_metrics.items())))
    return float(result.best_value)
