"""Checkpoints: everything needed to rebuild the model without the original config files.

A checkpoint holds the model and optimizer state, the epoch, the resolved run config, the dataset
spec and the trained tasks, plus the `TrainState` an exact resume needs (epoch, step, permutation,
RNG states, early stopping, history, balancer state, partial loss sums). This module is the one
place that builds and reads checkpoint payloads; the key constants below name their fields.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import os
import random
import warnings
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from mtlrec.data.spec import DatasetSpec, TaskSpec
from mtlrec.errors import MtlrecError
from mtlrec.models import build_model
from mtlrec.models.base import MultiTaskModel
from mtlrec.models.seeded_init import loaded_next
from mtlrec.training import dcp_files
from mtlrec.training.calibration import apply_temperatures
from mtlrec.training.signals import complete_writes
from mtlrec.training.table_files import TABLES_DIR, assemble, files_named

log = logging.getLogger(__name__)

FORMAT = "mtlrec-checkpoint"
VERSION = 1
LAST, PREVIOUS, BEST = "last.pt", "last.prev.pt", "best.pt"
# Payload keys.
FORMAT_KEY, VERSION_KEY, EPOCH_KEY, MODEL_NAME_KEY = "format", "version", "epoch", "model_name"
MODEL_KEY, OPTIMIZER_KEY, CONFIG_KEY = "model_state", "optimizer_state", "config"
SPEC_KEY, TASKS_KEY, TRAIN_STATE_KEY = "dataset_spec", "loss_tasks", "train_state"
MONITOR_KEY, SEED_KEY, DATA_ORDER_SEED_KEY = "monitor", "seed", "data_order_seed"
INTEGRITY_KEY = "tensor_sha256"  # {tensor path: SHA-256}, checked on every load
TEMPERATURES_KEY = "temperatures"  # added by inference.load_run (mtlrec calibrate), never saved
# What every complete checkpoint holds (make_payload writes them all).
REQUIRED = (EPOCH_KEY, MODEL_NAME_KEY, MODEL_KEY, CONFIG_KEY, SPEC_KEY, TASKS_KEY)


class PayloadTables(Protocol):
    """What keeps tables out of a payload: table_files.TableFiles (native sparse tables) or
    torchrec_checkpoint.ShardedCheckpointer (tables sharded over several ranks)."""

    def externalize(self, payload: dict, epoch: int) -> dict: ...


@dataclass
class TrainState:
    """Everything besides model and optimizer that an exact resume needs.

    `step` is None for a state taken at the end of `epoch` (after validation). A mid-epoch state
    adds `step` (steps done in the epoch), the epoch's permutation, the order generator as the
    epoch began (a streamed epoch is replayed from it) and the partial loss sums of all ranks.
    Stored in a checkpoint as a plain dict under TRAIN_STATE_KEY (`to_dict` / `from_dict`).
    """

    epoch: int
    global_step: int
    order_generator: torch.Tensor
    rng: dict[str, Any]
    early_stopping: dict[str, Any]
    history: list[dict[str, Any]]
    best_state: dict[str, torch.Tensor]
    train_time: float
    train_rows: int
    balancer: dict[str, Any] = field(default_factory=dict)
    world_size: int = 1
    # optimizer-step state (mtlrec.training.optim_step): lr schedulers, GradScaler, weight EMA
    step_state: dict[str, Any] = field(default_factory=dict)
    step: int | None = None
    perm: torch.Tensor | None = None
    epoch_order_generator: torch.Tensor | None = None
    loss_sums: torch.Tensor | None = None
    counts: torch.Tensor | None = None
    epoch_seconds: float = 0.0

    @property
    def mid_epoch(self) -> bool:
        return self.step is not None

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        if not self.mid_epoch:  # an epoch-end state carries no partial epoch
            for key in ("perm", "epoch_order_generator", "loss_sums", "counts", "epoch_seconds"):
                out.pop(key)
        return out

    @classmethod
    def from_dict(cls, state: dict[str, Any]) -> TrainState:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in state.items() if k in known})


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


def flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix[:-1]: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(flatten(v, f"{prefix}{k}."))
    return out


def check_resume_config(original: dict, new: dict, path: Path) -> None:
    """Only RESUME_MAY_CHANGE keys may differ from the run's saved config (keys in both)."""
    a, b = flatten(original), flatten(new)
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


def rng_state(device: torch.device) -> dict[str, Any]:
    """The states of every random generator a run draws from (torch CPU/CUDA, numpy, python).

    numpy's key array is stored as a tensor, so the checkpoint loads with weights_only=True.
    """
    legacy = np.random.get_state(legacy=True)
    assert isinstance(legacy, tuple)  # the global RandomState is an MT19937: the legacy tuple
    kind, keys, pos, has_gauss, cached = legacy
    state = {
        "torch": torch.get_rng_state(),
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached),
        "python": random.getstate(),
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, *rest = state["numpy"]
    if torch.is_tensor(keys):
        keys = keys.numpy().astype(np.uint32)
    np.random.set_state((kind, keys, *rest))
    random.setstate(state["python"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def save_last(directory: Path, payload: dict, write, rotate: bool = True) -> Path:
    """Write checkpoints/last.pt, keeping the previous complete one as last.prev.pt.

    `write(payload, path)` must be atomic (temp file + rename). At every instant at least one
    complete last*.pt exists, so a crash or a kill during the write never loses the resume point.
    `rotate=False`: last.pt is a damaged file that a resume skipped for last.prev.pt, which stays
    the fallback (moved over it, a crash during the write would leave no complete checkpoint).
    """
    directory = Path(directory)
    last = directory / LAST
    with complete_writes():  # a second Ctrl-C waits: never a last.pt moved but not rewritten
        if last.is_file() and rotate:
            os.replace(last, directory / PREVIOUS)
        write(payload, last)
    return last


def load_resumable(directory: Path, gather: bool = True) -> tuple[dict, Path]:
    """The newest complete checkpoint of checkpoints/ (last.pt, else last.prev.pt).

    A truncated or corrupt file (or a damaged file of its DCP folder) is reported, naming it, and
    skipped for the older one; with no complete file left, the first error is raised. `gather`:
    as load_checkpoint's.
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
            return load_checkpoint(path, gather), path
        except MtlrecError as e:
            errors.append(e)
            if path != existing[-1]:
                log.warning("%s; falling back to %s", e, existing[-1])
    raise errors[0]


def best_weights(
    saved: torch.nn.Module, best: dict[str, torch.Tensor], current: bool
) -> dict[str, torch.Tensor]:
    """The best weights a checkpoint's TrainState holds. `current`: they are the weights of
    `saved` (the model best.pt holds) right now (keep_best kept this epoch's): then its own
    tensors, which the payload's model_state shares, so torch.save stores them once and
    make_payload hashes them once. Else the kept copy, not cloned (only keep_weights changes it,
    never while a checkpoint is written); a meta tensor in it (a table whose best weights the
    table files hold, training/best_files.py) stays one: TableFiles turns it into a reference."""
    source = saved.state_dict() if current else best
    return {k: v if v.is_meta else v.detach().cpu() for k, v in source.items()}


def keep_weights(
    kept: dict[str, torch.Tensor], current: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """`current` (a state dict) kept as the best weights: copied into the tensors of the previous
    `kept` when they fit, so a large table is never held twice; else a new copy."""
    reusable = kept.keys() == current.keys() and all(
        torch.is_tensor(v)
        and kept[k].shape == v.shape
        and kept[k].dtype == v.dtype
        and kept[k].device == v.device
        for k, v in current.items()
    )
    if not reusable:  # clones: a view's own elements, never all of the storage it views
        return {
            k: v.detach().clone() if torch.is_tensor(v) else copy.deepcopy(v)
            for k, v in current.items()
        }
    for k, v in current.items():
        kept[k].copy_(v)
    return kept


def make_payload(
    model: MultiTaskModel,
    optimizer: torch.optim.Optimizer | None,
    config: dict,
    spec: DatasetSpec,
    loss_tasks: tuple[TaskSpec, ...],
    epoch: int,
    train_state: TrainState | None = None,
    tables: PayloadTables | None = None,
    **info: Any,
) -> dict:
    """The checkpoint payload; `info` adds plain top-level fields (monitor, seed, data_order_seed).
    With `tables`, big sparse tables go to their own files (training/table_files.py), or sharded
    tables to a DCP folder (training/torchrec_checkpoint.py), and the payload references them:
    only what stays in the payload is hashed here."""
    payload = {
        FORMAT_KEY: FORMAT,
        VERSION_KEY: VERSION,
        EPOCH_KEY: epoch,
        MODEL_NAME_KEY: config["model"]["name"],
        MODEL_KEY: {k: v.detach().cpu() for k, v in model.state_dict().items()},
        OPTIMIZER_KEY: optimizer.state_dict() if optimizer is not None else None,
        CONFIG_KEY: config,
        SPEC_KEY: spec.to_dict(),
        TASKS_KEY: [t.__dict__.copy() for t in loss_tasks],
        **({} if train_state is None else {TRAIN_STATE_KEY: train_state.to_dict()}),
        **info,
    }
    if tables is not None:
        payload = tables.externalize(payload, epoch)
    digests: dict[tuple, str] = {}  # a tensor stored under two names is hashed once
    payload[INTEGRITY_KEY] = {name: _digest_once(t, digests) for name, t in _tensors(payload)}
    return payload


def _digest_once(t: torch.Tensor, seen: dict[tuple, str]) -> str:
    key = (t.untyped_storage().data_ptr(), t.storage_offset(), t.shape, t.stride(), t.dtype)
    if key not in seen:
        seen[key] = tensor_digest(t)
    return seen[key]


def _tensors(obj: Any, prefix: str = "") -> Iterator[tuple[str, torch.Tensor]]:
    """Every tensor of a payload with its path (`model_state/embedding.tables.0.weight`)."""
    if torch.is_tensor(obj):
        yield prefix, obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from _tensors(v, f"{prefix}/{k}" if prefix else str(k))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from _tensors(v, f"{prefix}[{i}]")


def tensor_digest(t: torch.Tensor) -> str:
    """SHA-256 of a tensor's dtype, shape and bytes."""
    flat = t.detach().cpu().contiguous().reshape(-1)
    data = flat if flat.dtype == torch.uint8 else flat.view(torch.uint8)
    h = hashlib.sha256(f"{t.dtype}{tuple(t.shape)}".encode())
    # ndarray has the buffer protocol; numpy's stubs declare __buffer__ only for Python >= 3.12
    h.update(data.numpy())  # type: ignore[arg-type]
    return h.hexdigest()


def verify_tensors(payload: dict, path: Path) -> None:
    """Every tensor equals its SHA-256 in the payload (checkpoints from before it: not checked)."""
    expected = payload.get(INTEGRITY_KEY)
    if expected is None:
        return
    body = {k: v for k, v in payload.items() if k != INTEGRITY_KEY}
    found = dict(_tensors(body))
    for name in sorted(set(expected) | set(found)):
        if (
            name not in found
            or name not in expected
            or tensor_digest(found[name]) != expected[name]
        ):
            raise MtlrecError(
                f"{path}: tensor {name} does not match its SHA-256 in the checkpoint (the file is "
                "corrupt); use an older checkpoint"
            )


def resume_state(payload: dict, path: Path) -> TrainState:
    """The TrainState of a resumable checkpoint (also one written before TrainState existed)."""
    if TRAIN_STATE_KEY not in payload:
        raise MtlrecError(
            f"{path}: checkpoint has no training state (written by an older mtlrec); "
            "it cannot be resumed, start a new run"
        )
    return TrainState.from_dict(payload[TRAIN_STATE_KEY])


def restore_training(
    payload: dict,
    path: Path,
    model: MultiTaskModel,
    optimizer: torch.optim.Optimizer,
    model_name: str,
    spec: DatasetSpec,
) -> TrainState:
    """Load a resumable checkpoint's weights and optimizer state; returns its TrainState."""
    state = resume_state(payload, path)
    check_compatible(payload, path, model_name, spec)
    load_weights(model, payload[MODEL_KEY], path)
    try:
        optimizer.load_state_dict(payload[OPTIMIZER_KEY])
    except (ValueError, KeyError) as e:
        raise MtlrecError(f"{path}: optimizer state does not fit the model ({e})") from None
    return state


def load_checkpoint(path: str | Path, gather: bool = True, tables: bool = True) -> dict:
    """Load a checkpoint file, failing with one clear line if it is missing, truncated or foreign.

    Tables kept in files beside it come back as full tensors: every reader sees the ordinary
    layout. `gather=False` leaves a DCP folder's sharded tables where they are (after checking
    its files): a resume on several ranks loads each rank's shards from it. `tables=False` leaves
    the references to table files as they are, unchecked (training/best_files.py reads them)."""
    path = Path(path)
    if not path.is_file():
        raise MtlrecError(f"{path}: checkpoint not found")
    if _is_torchscript(path):  # torch.load would hand it to torch.jit.load: never load it
        raise MtlrecError(f"{path}: is a TorchScript model (an export), not an mtlrec checkpoint")
    try:
        # weights_only: unpickling runs no code; numpy arrays are allowed for the RNG state of
        # checkpoints written before it was stored as a tensor. torch's warnings about a foreign
        # file (pickle protocol, ...) are not shown: the one line below says what is wrong.
        with torch.serialization.safe_globals(_NUMPY_GLOBALS), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a foreign or damaged file fails anywhere in the unpickler
        raise MtlrecError(
            f"{path}: checkpoint is truncated or corrupt ({type(e).__name__}); use an older checkpoint"
        ) from None
    if not isinstance(payload, dict) or payload.get(FORMAT_KEY) != FORMAT:
        raise MtlrecError(f"{path}: not an mtlrec checkpoint")
    missing = [k for k in REQUIRED if k not in payload]
    if missing:
        raise MtlrecError(
            f"{path}: checkpoint is incomplete (no {missing}); use an older checkpoint"
        )
    verify_tensors(payload, path)
    if not tables:
        return payload
    payload = assemble(payload, path)  # big tables kept in checkpoints/tables/: full tensors again
    if not gather:
        if dcp_files.SHARDED_KEY in payload:
            dcp_files.verify(payload[dcp_files.SHARDED_KEY], path)
        return payload
    return dcp_files.gather(payload, path)  # tables sharded in a DCP folder: full tensors


def parts_of(checkpoint: Path) -> list[Path]:
    """The files beside `checkpoint` that it names (its table files, the files of its DCP
    folders): what must go with it, under the same relative paths, for it to load anywhere else.
    [] when it names none or cannot be read."""
    try:
        payload = torch.load(checkpoint, map_location="cpu", weights_only=True, mmap=True)
        directory = Path(checkpoint).parent
        files = {directory / TABLES_DIR / name for name in files_named(payload)}
        manifest = payload.get(dcp_files.SHARDED_KEY) or {}
        for part in (manifest, manifest.get("best") or {}):
            files |= {directory / part["folder"] / name for name in part.get("files", {})}
    except Exception as e:  # foreign or damaged: loading it says why, not this
        log.debug("%s: no parts read (%s)", checkpoint, e)
        return []
    inside = directory.resolve()  # an edited name ("../..") never reaches a file elsewhere
    return sorted(f for f in files if f.resolve().is_relative_to(inside) and f.is_file())


def _is_torchscript(path: Path) -> bool:
    """A zip archive holding TorchScript code (what `mtlrec export --format torchscript` writes)."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError):
        return False
    return any(n.endswith("/constants.pkl") or "/code/" in n for n in names)


_NUMPY_GLOBALS = [
    # what numpy arrays unpickle with (numpy >= 2 names its module numpy._core)
    (np._core if hasattr(np, "_core") else np.core).multiarray._reconstruct,
    np.ndarray,
    np.dtype,
    type(np.dtype(np.uint32)),
]


def check_compatible(payload: dict, path: Path, model_name: str, spec: DatasetSpec) -> None:
    """Refuse a checkpoint of another model or of data with other features (one clear line)."""
    if payload.get(MODEL_NAME_KEY) != model_name:
        raise MtlrecError(
            f"{path}: checkpoint holds model '{payload.get(MODEL_NAME_KEY)}', not '{model_name}'; "
            "use the run's own model or start a new run"
        )
    saved = [(f["name"], f["kind"], f["vocab_size"]) for f in payload[SPEC_KEY]["features"]]
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
    spec = DatasetSpec.from_dict(payload[SPEC_KEY], source="checkpoint")
    tasks = tuple(TaskSpec(**t) for t in payload[TASKS_KEY])
    with loaded_next():  # its seeded tables: the payload's values, not drawn first
        model, _ = build_model(payload[CONFIG_KEY]["model"], spec, tasks)
    load_weights(model, payload[MODEL_KEY], payload.get("path", "checkpoint"))
    if payload.get(TEMPERATURES_KEY):
        apply_temperatures(model, payload[TEMPERATURES_KEY])
    model.eval()
    return model, spec, tasks
