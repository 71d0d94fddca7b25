"""A run dir's checkpoint for inference: found, loaded, and one clear line when it is not there."""

from __future__ import annotations

from pathlib import Path

from mtlrec.errors import MtlrecError
from mtlrec.training.checkpoint import TEMPERATURES_KEY, load_checkpoint


def load_run(run_dir: str | Path, checkpoint: str, calibrated: bool = True) -> tuple[dict, Path]:
    """(checkpoint payload, checkpoint path) of RUN_DIR/checkpoints/<checkpoint>; `calibrated`:
    with the temperatures of RUN_DIR/calibration.json fitted on it (mtlrec calibrate), which
    model_from_checkpoint applies."""
    path = Path(run_dir).expanduser()
    if not path.is_dir():
        raise MtlrecError(f"{path}: no such run dir")
    ckpt = path / "checkpoints" / checkpoint
    if not ckpt.is_file():
        raise MtlrecError(
            f"{ckpt}: checkpoint not found; is {path} a run dir of `mtlrec train` that finished an epoch?"
        )
    payload = load_checkpoint(ckpt)
    payload["path"] = str(ckpt)
    if calibrated:
        from mtlrec.inference.calibrate import temperatures_for

        payload[TEMPERATURES_KEY] = temperatures_for(path, checkpoint, payload)
    return payload, ckpt
