"""A run dir's checkpoint for inference: found, loaded, and one clear line when it is not there."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

from mtlrec.errors import MtlrecError
from mtlrec.runs.records import read_info
from mtlrec.training.binding import check_run
from mtlrec.training.calibration import CALIBRATION_FILE
from mtlrec.training.checkpoint import (
    INTEGRITY_KEY,
    MODEL_KEY,
    TEMPERATURES_KEY,
    load_checkpoint,
)

log = logging.getLogger(__name__)


def load_run(run_dir: str | Path, checkpoint: str, calibrated: bool = True) -> tuple[dict, Path]:
    """(checkpoint payload, checkpoint path) of RUN_DIR/checkpoints/<checkpoint>; `calibrated`:
    with the temperatures of RUN_DIR/calibration.json fitted on it (mtlrec calibrate), which
    model_from_checkpoint applies."""
    path = Path(run_dir).expanduser()
    if not path.is_dir():
        raise MtlrecError(f"{path}: no such run dir")
    # `best_ctr` means checkpoints/best_ctr.pt (trainer.keep_best_per_task): the suffix is optional.
    if not checkpoint.endswith(".pt") and (path / "checkpoints" / f"{checkpoint}.pt").is_file():
        checkpoint = f"{checkpoint}.pt"
    ckpt = path / "checkpoints" / checkpoint
    if not ckpt.is_file():
        raise MtlrecError(
            f"{ckpt}: checkpoint not found; is {path} a run dir of `mtlrec train` that finished an epoch?"
        )
    payload = load_checkpoint(ckpt)
    info = read_info(path)
    check_run(payload, ckpt, path, info.get("model"), info.get("config_hash"))
    payload["path"] = str(ckpt)
    if calibrated:
        payload[TEMPERATURES_KEY] = temperatures_for(path, checkpoint, payload)
    return payload, ckpt


def weights_digest(payload: dict) -> str:
    """SHA-256 over the checkpoint's per-tensor digests of its model weights."""
    digests = payload.get(INTEGRITY_KEY) or {}
    mine = sorted((k, v) for k, v in digests.items() if k.startswith(f"{MODEL_KEY}/"))
    return hashlib.sha256(json.dumps(mine).encode()).hexdigest()


def temperatures_for(run_dir: Path, checkpoint: str, payload: dict) -> dict[str, float]:
    """The temperatures of RUN_DIR/calibration.json when they were fitted on this checkpoint."""
    path = run_dir / CALIBRATION_FILE
    if not path.is_file():
        return {}
    try:
        record = json.loads(path.read_text())
        temperatures = {str(k): float(v) for k, v in record["temperatures"].items()}
        fitted = (record["checkpoint"], record["weights_sha256"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        raise MtlrecError(
            f"{path}: not a calibration record of `mtlrec calibrate`; remove it or run "
            f"`mtlrec calibrate {run_dir} --overwrite`"
        ) from None
    if fitted != (checkpoint, weights_digest(payload)):
        log.warning(
            "%s was fitted on other weights than checkpoints/%s: scoring uncalibrated "
            "(run `mtlrec calibrate %s --overwrite`)",
            path,
            checkpoint,
            run_dir,
        )
        return {}
    return temperatures
