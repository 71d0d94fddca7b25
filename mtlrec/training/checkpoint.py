"""Checkpoints: everything needed to rebuild the model without the original config files.

A checkpoint holds the model and optimizer state, the epoch, the resolved run config, the dataset
spec and the trained tasks, plus whatever training state the trainer adds (history, early
stopping, RNG states).
"""

from __future__ import annotations

import logging
import os
import pickle
import random
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mtlrec.data.spec import DatasetSpec, TaskSpec
from mtlrec.errors import MtlrecError
from mtlrec.models import build_model
from mtlrec.models.base import MultiTaskModel

log = logging.getLogger(__name__)

FORMAT = "mtlrec-checkpoint"
VERSION = 1
LAST, PREVIOUS, BEST = "last.pt", "last.prev.pt", "best.pt"
# What every complete checkpoint holds (make_payload writes them all).
REQUIRED = ("epoch", "model_name", "model_state", "config", "dataset_spec", "loss_tasks")


def rng_state(device: torch.device) -> dict[str, Any]:
    """The states of every random generator a run draws from (torch CPU/CUDA, numpy, python)."""
    state = {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def save_last(directory: Path, payload: dict, write) -> Path:
    """Write checkpoints/last.pt, keeping the previous complete one as last.prev.pt.

    `write(payload, path)` must be atomic (temp file + rename). At every instant at least one
    complete last*.pt exists, so a crash or a kill during the write never loses the resume point.
    """
    directory = Path(directory)
    last = directory / LAST
    if last.is_file():
        os.replace(last, directory / PREVIOUS)
    write(payload, last)
    return last


def load_resumable(directory: Path) -> tuple[dict, Path]:
    """The newest complete checkpoint of checkpoints/ (last.pt, else last.prev.pt).

    A truncated or corrupt file is reported (naming it) and skipped for the older one; with no
    complete file left, the first error is raised.
    """
    directory = Path(directory)
    candidates = [directory / LAST, directory / PREVIOUS]
    existing = [p for p in candidates if p.is_file()]
    if not existing:
        raise MtlrecError(
            f"{directory.parent}: no checkpoint to resume from ({directory / LAST} does not exist); "
            "the run stopped before its first checkpoint: start it again without resume="
        )
    errors = []
    for path in existing:
        try:
            return load_checkpoint(path), path
        except MtlrecError as e:
            errors.append(e)
            if path != existing[-1]:
                log.warning("%s; falling back to %s", e, existing[-1])
    raise errors[0]


def make_payload(
    model: MultiTaskModel,
    optimizer: torch.optim.Optimizer | None,
    config: dict,
    spec: DatasetSpec,
    loss_tasks: tuple[TaskSpec, ...],
    epoch: int,
    **state: Any,
) -> dict:
    return {
        "format": FORMAT,
        "version": VERSION,
        "epoch": epoch,
        "model_name": config["model"]["name"],
        "model_state": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "optimizer_state": optimizer.state_dict() if optimizer is not None else None,
        "config": config,
        "dataset_spec": spec.to_dict(),
        "loss_tasks": [t.__dict__.copy() for t in loss_tasks],
        **state,
    }


def load_checkpoint(path: str | Path) -> dict:
    """Load a checkpoint file, failing with one clear line if it is missing, truncated or foreign."""
    path = Path(path)
    if not path.is_file():
        raise MtlrecError(f"{path}: checkpoint not found")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=False)
    except (
        RuntimeError,
        EOFError,
        pickle.UnpicklingError,
        zipfile.BadZipFile,
        OSError,
        ValueError,
    ) as e:
        raise MtlrecError(
            f"{path}: checkpoint is truncated or corrupt ({type(e).__name__}); use an older checkpoint"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise MtlrecError(f"{path}: not an mtlrec checkpoint")
    missing = [k for k in REQUIRED if k not in payload]
    if missing:
        raise MtlrecError(
            f"{path}: checkpoint is incomplete (no {missing}); use an older checkpoint"
        )
    return payload


def check_compatible(payload: dict, path: Path, model_name: str, spec: DatasetSpec) -> None:
    """Refuse a checkpoint of another model or of data with other features (one clear line)."""
    if payload.get("model_name") != model_name:
        raise MtlrecError(
            f"{path}: checkpoint holds model '{payload.get('model_name')}', not '{model_name}'; "
            "use the run's own model or start a new run"
        )
    saved = [(f["name"], f["kind"], f["vocab_size"]) for f in payload["dataset_spec"]["features"]]
    now = [(f.name, f.kind, f.vocab_size) for f in spec.features]
    if saved != now:
        diff = [f"{a} != {b}" for a, b in zip(saved, now, strict=False) if a != b]
        if len(saved) != len(now):
            diff.append(f"{len(saved)} features != {len(now)}")
        raise MtlrecError(
            f"{path}: checkpoint was trained on other features than dataset '{spec.name}' has "
            f"(checkpoint vs data: {'; '.join(diff[:3])}); use the dataset the run was trained on"
        )


def load_weights(model: MultiTaskModel, state: dict, path: Path | str) -> None:
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0]
        raise MtlrecError(f"{path}: weights do not fit the configured model ({first})") from None


def model_from_checkpoint(
    payload: dict,
) -> tuple[MultiTaskModel, DatasetSpec, tuple[TaskSpec, ...]]:
    """Rebuild the trained model (weights loaded, eval mode) from a checkpoint payload."""
    spec = DatasetSpec.from_dict(payload["dataset_spec"], source="checkpoint")
    tasks = tuple(TaskSpec(**t) for t in payload["loss_tasks"])
    model, _ = build_model(payload["config"]["model"], spec, tasks)
    load_weights(model, payload["model_state"], payload.get("path", "checkpoint"))
    model.eval()
    return model, spec, tasks
