"""Checkpoints: everything needed to rebuild the model without the original config files.

A checkpoint holds the model and optimizer state, the epoch, the resolved run config, the dataset
spec and the trained tasks, plus whatever training state the trainer adds (history, early
stopping, RNG states).
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from mtlrec.data.spec import DatasetSpec, TaskSpec
from mtlrec.errors import MtlrecError
from mtlrec.models import build_model
from mtlrec.models.base import MultiTaskModel

FORMAT = "mtlrec-checkpoint"
VERSION = 1


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
    return payload


def model_from_checkpoint(
    payload: dict,
) -> tuple[MultiTaskModel, DatasetSpec, tuple[TaskSpec, ...]]:
    """Rebuild the trained model (weights loaded, eval mode) from a checkpoint payload."""
    spec = DatasetSpec.from_dict(payload["dataset_spec"], source="checkpoint")
    tasks = tuple(TaskSpec(**t) for t in payload["loss_tasks"])
    model, _ = build_model(payload["config"]["model"], spec, tasks)
    model.load_state_dict(payload["model_state"])
    model.eval()
    return model, spec, tasks
