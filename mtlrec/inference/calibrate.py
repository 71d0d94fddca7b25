"""`mtlrec calibrate RUN_DIR`: per-output temperatures fitted on the validation split.

For each binary output the run scores (its own sample space: cvr on clicked rows), a temperature
T > 0 minimizing the split's log loss of sigmoid(logit / T) (mtlrec.training.calibration).
RUN_DIR/calibration.json records them with the checkpoint they were fitted for (its name and the
SHA-256 of its weights); `load_run` hands them to `model_from_checkpoint`, which divides those
outputs' logits by T, so evaluate, predict and export score the calibrated model. A checkpoint
other than the one fitted (e.g. best.pt after a resume trained on) is scored uncalibrated, with
a warning to calibrate again.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from mtlrec.errors import MtlrecError
from mtlrec.inference.loading import load_run, weights_digest
from mtlrec.training.calibration import CALIBRATION_FILE, ECE_BINS, ece, fit_temperature, logits_of
from mtlrec.training.checkpoint import BEST

log = logging.getLogger(__name__)


def calibrate(
    run_dir: str | Path, split: str = "val", checkpoint: str = BEST, overwrite: bool = False
) -> dict[str, Any]:
    """Fit, write RUN_DIR/calibration.json and return its record."""
    from mtlrec.data.loader import load_split
    from mtlrec.inference.evaluate import split_file
    from mtlrec.runs.atomic import atomic_write_json
    from mtlrec.training.checkpoint import model_from_checkpoint
    from mtlrec.training.evaluator import Evaluator
    from mtlrec.training.metrics import eval_targets, logloss

    run_path = Path(run_dir).expanduser()
    out = run_path / CALIBRATION_FILE
    if out.exists() and not overwrite:
        raise MtlrecError(f"{out} exists; pass --overwrite to fit the temperatures again")
    payload, _ = load_run(run_path, checkpoint, calibrated=False)
    model, spec, tasks = model_from_checkpoint(payload)
    config = payload["config"]
    selected = spec.select_tasks((config.get("dataset") or {}).get("tasks"))
    targets = [t for t in eval_targets(tasks, model.output_types, spec, selected) if not t.suffix]
    path = split_file(spec, payload, split, None)
    violations = (config.get("dataset") or {}).get("funnel_violations", "error")
    tensors = load_split(path, spec, tuple(t.task for t in targets), violations)
    predictions, _ = Evaluator(model, spec, tasks, targets, model_device(model)).predict(tensors)
    labels = tensors.labels.numpy()
    bins = int((config.get("metrics") or {}).get("ece_bins", ECE_BINS))  # as the run's metrics
    temperatures: dict[str, float] = {}
    scores: dict[str, dict[str, float]] = {}
    for target in targets:
        task = target.task
        if task.type != "binary" or task.output_name in temperatures:
            continue
        y = labels[:, spec.label_index(task.label)].astype(np.float64)
        p = predictions[task.output_name].astype(np.float64)
        if task.where is not None:
            rows = labels[:, spec.label_index(task.where)] == 1
            y, p = y[rows], p[rows]
        if y.size == 0 or y.min() == y.max():
            log.warning("%s: %s has one class on %s; left uncalibrated", run_path, task.name, split)
            continue
        z = logits_of(p)
        t = fit_temperature(y, z)
        q = 1 / (1 + np.exp(-z / t))
        temperatures[task.output_name] = t
        scores[task.output_name] = {
            "logloss_before": logloss(y, p),
            "logloss_after": logloss(y, q),
            "ece_before": ece(y, p, bins),
            "ece_after": ece(y, q, bins),
        }
    record = {
        "checkpoint": checkpoint,
        "weights_sha256": weights_digest(payload),
        "split": split,
        "temperatures": temperatures,
        "scores": scores,
    }
    atomic_write_json(out, record)
    return record


def model_device(model: Any) -> Any:
    import torch

    return next((p.device for p in model.parameters()), torch.device("cpu"))
