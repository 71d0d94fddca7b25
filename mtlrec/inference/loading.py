"""A run dir's checkpoint for inference: found, loaded, and one clear line when it is not there."""

from __future__ import annotations

from pathlib import Path

from mtlrec.errors import MtlrecError
from mtlrec.runs.records import read_info
from mtlrec.training.binding import check_run
from mtlrec.training.checkpoint import load_checkpoint


def load_run(run_dir: str | Path, checkpoint: str) -> tuple[dict, Path]:
    """(checkpoint payload, checkpoint path) of RUN_DIR/checkpoints/<checkpoint>."""
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
    return payload, ckpt
