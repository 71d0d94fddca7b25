"""`RUN/fusion/<name>.json`: what `mtlrec fuse` found, written once, read by predict and export.

A fusion record is never replaced: a second search under the same name is refused (pick another
`--name`). It names the checkpoint (file and SHA-256) whose predictions it was searched on, so
predict and export refuse to apply it to other weights.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mtlrec.errors import MtlrecError
from mtlrec.outputs import inject_fault, writing
from mtlrec.ranking.forms import FORMS, FusionHead
from mtlrec.runs.atomic import temp_path
from mtlrec.runs.records import json_safe

FUSION_DIR = "fusion"
DEFAULT_NAME = "fusion"
SCHEMA_VERSION = 1


def fusion_path(run_dir: str | Path, name: str = DEFAULT_NAME) -> Path:
    if not name or "/" in name or name.startswith("."):
        raise MtlrecError(f"--name {name!r}: use a plain file name such as 'fusion' or 'ndcg'")
    return Path(run_dir).expanduser() / FUSION_DIR / f"{name}.json"


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_new(path: Path, data: bytes) -> None:
    """Write `path` atomically and only if it does not exist (a hard link publishes the temp
    file, so a file that appeared meanwhile is refused, never replaced)."""
    tmp = temp_path(path)
    try:
        # mtlrec.outputs.writing: a full disk or a read-only dir is one line naming the file
        with writing(path, temps=[tmp]):
            inject_fault(path)
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "xb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            try:
                os.link(tmp, path)
            except FileExistsError:
                raise MtlrecError(
                    f"{path}: already exists; fusion results are never replaced: pass another --name"
                ) from None
    finally:
        tmp.unlink(missing_ok=True)


def write_record(path: Path, record: dict[str, Any]) -> None:
    text = json.dumps(json_safe(record), indent=2) + "\n"
    write_new(path, text.encode())


@dataclass(frozen=True)
class FusionRecord:
    path: Path
    form: str
    tasks: list[str]
    weights: list[float]
    checkpoint: str
    checkpoint_sha256: str

    def head(self) -> FusionHead:
        return FusionHead(self.form, self.weights)

    def describe(self) -> dict[str, Any]:
        return {
            "record": str(self.path),
            "form": self.form,
            "tasks": self.tasks,
            "weights": dict(zip(self.tasks, self.weights, strict=True)),
        }


def read_record(run_dir: str | Path, name: str = DEFAULT_NAME) -> FusionRecord:
    """The fusion `name` of a run, checked field by field (one line naming what is wrong)."""
    path = fusion_path(run_dir, name)
    if not path.is_file():
        raise MtlrecError(f"{path}: no such fusion; run `mtlrec fuse {run_dir}` first")
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise MtlrecError(f"{path}: not a readable fusion record ({e})") from None
    weights = data.get("weights") if isinstance(data, dict) else None
    ok = (
        isinstance(data, dict)
        and data.get("form") in FORMS
        and isinstance(weights, dict)
        and len(weights) >= 2
        and all(
            isinstance(w, (int, float)) and not isinstance(w, bool) and math.isfinite(w)
            for w in weights.values()
        )
        and isinstance(data.get("checkpoint"), str)
        and isinstance(data.get("checkpoint_sha256"), str)
    )
    if not ok or not isinstance(weights, dict):
        raise MtlrecError(
            f"{path}: malformed fusion record (needs form in {FORMS}, weights of >= 2 tasks, "
            "checkpoint and checkpoint_sha256); run `mtlrec fuse` again with another --name"
        )
    return FusionRecord(
        path,
        data["form"],
        list(weights),
        [float(w) for w in weights.values()],
        data["checkpoint"],
        data["checkpoint_sha256"],
    )


def check_applies(record: FusionRecord, checkpoint: Path, outputs: list[str]) -> None:
    """Refuse a fusion searched on other weights than `checkpoint`'s, or on other outputs."""
    if checkpoint.name != record.checkpoint or file_sha256(checkpoint) != record.checkpoint_sha256:
        raise MtlrecError(
            f"{record.path}: its weights were searched on the predictions of {record.checkpoint} "
            f"as it was then, not of {checkpoint}; run `mtlrec fuse --checkpoint "
            f"{checkpoint.name}` (with another --name) or use the checkpoint it names"
        )
    missing = [t for t in record.tasks if t not in outputs]
    if missing:
        raise MtlrecError(f"{record.path}: fuses {missing}, which the model does not output")
