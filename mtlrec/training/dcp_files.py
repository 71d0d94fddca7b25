"""The sharded tables of a checkpoint in a torch.distributed.checkpoint (DCP) folder: the format,
its integrity checks and its gathering into the ordinary layout, in one process, without TorchRec.

A checkpoint of a run whose tables TorchRec shards over several ranks (docs/distributed.md,
"Checkpoints of sharded tables") keeps the tables and the fused optimizer's state out of last.pt:
each rank writes its own shards with `dcp.save` into checkpoints/sharded/<tag>/ (DCP's `.metadata`
plus one `__<rank>_<n>.distcp` file per rank), and last.pt holds a manifest under SHARDED_KEY:

    {"format": FORMAT, "folder": "sharded/<tag>", "files": {file name: SHA-256},
     "model_keys": [model_state keys in the folder], "fused_keys": [fused_tables keys],
     "best": {"folder", "files", "keys"} | None, "world_size": ranks that wrote it}

"best" names where the best weights' tables (TrainState.best_state) are: the same folder when
this checkpoint's tables are the best ones, else the folder of the best epoch's checkpoint (no
second copy). The DCP keys are the ordinary payload paths (`model_state/<key>`,
`fused_tables/<key>`), so `gather` puts every tensor back where a gathered checkpoint has it.

Nothing read here executes code: every file's SHA-256 is checked against the manifest (itself
inside a weights_only last.pt) before DCP reads it, DCP's `.metadata` pickle is read by an
unpickler that builds only DCP's metadata classes, a folder whose entries are not all tensors is
refused (DCP would read another item with torch.load(weights_only=False)), and the tensors by
torch.load(weights_only).
"""

from __future__ import annotations

import io
import logging
import pickle
import re
import shutil
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from mtlrec.errors import MtlrecError
from mtlrec.outputs import inject_fault, write_error, write_error_code
from mtlrec.training.table_files import OWN_TAG, mine, tell_unreadable
from mtlrec.training.table_files import file_digest as file_sha256  # one file hash for both

log = logging.getLogger(__name__)

SHARDED_KEY = "sharded_tables"  # payload key: the manifest (module docstring)
FORMAT = "mtlrec-dcp-tables-1"
SHARDED_DIR = "sharded"  # checkpoints/sharded/<tag>/: one folder per checkpoint
TEMP_SUFFIX = ".tmp"  # a folder being written; renamed once complete
MODEL, FUSED = "model_state", "fused_tables"  # DCP key prefixes
METADATA = ".metadata"  # DCP's index of the folder
OWN_FOLDER = re.compile(rf"{OWN_TAG}(\{TEMP_SUFFIX})?")  # what `collect` may delete


def folders_named(manifest: dict[str, Any]) -> set[str]:
    """The folders (relative to checkpoints/) a manifest needs: its own and its best's."""
    best = manifest.get("best") or {}
    return {manifest["folder"], *([best["folder"]] if best else [])}


def verify(manifest: dict[str, Any], checkpoint: Path) -> None:
    """Every file of the folders `manifest` names exists and matches its SHA-256 (one line naming
    the file otherwise). Files DCP did not write for this checkpoint are not looked at."""
    if manifest.get("format") != FORMAT:
        raise MtlrecError(
            f"{checkpoint}: its sharded tables are in format {manifest.get('format')!r}, which "
            "this mtlrec cannot read; use the mtlrec that wrote the run"
        )
    parts = [manifest, *([manifest["best"]] if manifest.get("best") else [])]
    for part in parts:
        folder = checkpoint.parent / part["folder"]
        for name, digest in sorted(part["files"].items()):
            file = folder / name
            if not file.is_file():
                raise MtlrecError(
                    f"{checkpoint}: its sharded tables file {file} is missing (a checkpoint of "
                    "sharded tables is its .pt file plus the folder it names); use an older "
                    "checkpoint"
                )
            if file_sha256(file) != digest:
                raise MtlrecError(
                    f"{checkpoint}: sharded tables file {file} does not match its SHA-256 in the "
                    "checkpoint (corrupt, or from another run); use an older checkpoint"
                )


# What DCP's .metadata pickle may build: its metadata dataclasses, torch dtypes/sizes/layouts and
# paths; anything else (a function, os.system, ...) is refused before it is looked up.
_SAFE = {
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
    ("torch", "Size"),
    ("torch.serialization", "_get_layout"),
    ("pathlib", "PosixPath"),
    ("pathlib", "PurePosixPath"),
    ("pathlib", "WindowsPath"),
    ("pathlib", "PureWindowsPath"),
    ("collections", "OrderedDict"),
}


class _MetadataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        from torch.distributed.checkpoint import metadata

        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        if module == metadata.__name__ and isinstance(getattr(metadata, name, None), type):
            return getattr(metadata, name)
        if (module, name) in _SAFE:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not DCP metadata")


def read_metadata(folder: Path) -> Any:
    """DCP's Metadata of a folder, unpickled without executing code (see _MetadataUnpickler).
    Every entry must be a tensor: DCP reads any other item (BytesStorageMetadata) with
    torch.load(weights_only=False), which would run the code a crafted file holds."""
    from torch.distributed.checkpoint.metadata import Metadata, StorageMeta, TensorStorageMetadata

    data = (folder / METADATA).read_bytes()
    metadata = _MetadataUnpickler(io.BytesIO(data)).load()
    if not isinstance(metadata, Metadata):
        raise pickle.UnpicklingError("not DCP metadata")
    for key, entry in metadata.state_dict_metadata.items():
        if type(entry) is not TensorStorageMetadata:
            raise pickle.UnpicklingError(f"{key} is a {type(entry).__name__}, not a tensor")
    if getattr(metadata, "storage_meta", None) is None:
        metadata.storage_meta = StorageMeta()
    return metadata


def safe_reader(folder: Path) -> Any:
    """A DCP FileSystemReader of `folder` whose metadata is read by `read_metadata`."""
    from torch.distributed.checkpoint import FileSystemReader

    class SafeReader(FileSystemReader):
        def read_metadata(self, *args: Any, **kwargs: Any) -> Any:
            metadata = read_metadata(folder)
            metadata.storage_meta.load_id = self.load_id
            return metadata

    return SafeReader(folder)


def failure(e: BaseException) -> str:
    """What failed, in one line (`Type: first line`). DCP raises a CheckpointException, a
    BaseException that `except Exception` misses, wrapping each rank's own: the first one's."""
    from torch.distributed.checkpoint.api import CheckpointException

    if isinstance(e, CheckpointException) and e.failures:
        e = next(iter(e.failures.values()))[0]  # per rank: (its exception, its traceback)
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0]}" if text else type(e).__name__


@contextmanager
def writing_folder(temp: Path) -> Iterator[None]:
    """A failure to write the folder `temp` (<tag>.tmp: a full disk, a read-only run dir; DCP
    wraps each rank's error in a CheckpointException, a BaseException) as one line naming it,
    the folder removed first: nothing half-written is left, and the last.pt of before (written
    after its folder is complete) and the folders it names are untouched."""
    from torch.distributed.checkpoint.api import CheckpointException

    try:
        inject_fault(temp, no_space=False)  # tests: MTLREC_FAULT_READ_ONLY=sharded (outputs)
        yield
    except (Exception, CheckpointException) as e:
        shutil.rmtree(temp, ignore_errors=True)
        if isinstance(e, MtlrecError):
            raise
        raise _write_failure(temp, e) from None


def _write_failure(temp: Path, e: BaseException) -> MtlrecError:
    from torch.distributed.checkpoint.api import CheckpointException

    cause = e
    if isinstance(e, CheckpointException) and e.failures:
        cause = next(iter(e.failures.values()))[0]  # the first rank's own exception
    kept = "last.pt and the folders it names are kept"
    code = write_error_code(cause) if isinstance(cause, Exception) else None
    if code is not None:  # a full disk, a read-only dir, no permission: what to do about it
        return MtlrecError(f"{write_error(temp, code)} ({kept})")
    return MtlrecError(
        f"{temp}: cannot write it ({failure(e)}); {kept}: once the cause is fixed, resume the run"
    )


def read_full(folder: Path, keys: list[str], checkpoint: Path) -> dict[str, torch.Tensor]:
    """The full tensors `keys` of a DCP folder, read in this process alone (no process group)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.api import CheckpointException

    try:
        entries = read_metadata(folder).state_dict_metadata
        out = {
            k: torch.empty(tuple(entries[k].size), dtype=entries[k].properties.dtype) for k in keys
        }
        with warnings.catch_warnings():  # "torch.distributed is ... uninitialized": one process
            warnings.simplefilter("ignore", UserWarning)
            dcp.load(out, storage_reader=safe_reader(folder), no_dist=True)
    except (Exception, CheckpointException) as e:  # files that match their digests, not DCP
        raise MtlrecError(
            f"{checkpoint}: its sharded tables in {folder} cannot be read ({failure(e)}); use an "
            "older checkpoint"
        ) from None
    return out


def gather(payload: dict, checkpoint: Path) -> dict:
    """A checkpoint payload with its sharded tables read back into the ordinary layout (full
    tensors in model_state, optimizer_state.fused_tables and the best weights); a payload without
    them is returned as it is. The files are verified first."""
    manifest = payload.get(SHARDED_KEY)
    if manifest is None:
        return payload
    verify(manifest, checkpoint)
    out = dict(payload)
    out.pop(SHARDED_KEY)
    folder = checkpoint.parent / manifest["folder"]
    wanted = [f"{MODEL}/{k}" for k in manifest["model_keys"]]
    wanted += [f"{FUSED}/{k}" for k in manifest["fused_keys"]]
    full = read_full(folder, wanted, checkpoint)
    out["model_state"] = {
        **payload["model_state"],
        **{k: full[f"{MODEL}/{k}"] for k in manifest["model_keys"]},
    }
    if manifest["fused_keys"] and payload.get("optimizer_state") is not None:
        fused = {k: full[f"{FUSED}/{k}"] for k in manifest["fused_keys"]}
        out["optimizer_state"] = {**payload["optimizer_state"], FUSED: dict(sorted(fused.items()))}
    best = manifest.get("best")
    if best and "train_state" in payload:
        out["train_state"] = {
            **payload["train_state"],
            "best_state": {**payload["train_state"]["best_state"], **read_best(best, checkpoint)},
        }
    return out


def read_best(best: dict[str, Any], checkpoint: Path) -> dict[str, torch.Tensor]:
    """The best weights' tables a manifest's "best" names, as full tensors."""
    folder = checkpoint.parent / best["folder"]
    full = read_full(folder, [f"{MODEL}/{k}" for k in best["keys"]], checkpoint)
    return {k: full[f"{MODEL}/{k}"] for k in best["keys"]}


def named_folders(checkpoints: Path, cache: dict[tuple, set[str]]) -> set[str] | None:
    """The folders every checkpoint (*.pt) of `checkpoints` names; None when one cannot be read
    (being replaced, foreign, damaged): then nothing may be collected. `cache`: by file identity."""
    keep: set[str] = set()
    for checkpoint in checkpoints.glob("*.pt"):
        try:
            st = checkpoint.stat()
            key = (st.st_ino, st.st_mtime_ns, st.st_size)
            if key not in cache:
                payload = torch.load(checkpoint, map_location="cpu", weights_only=True, mmap=True)
                manifest = payload.get(SHARDED_KEY) if isinstance(payload, dict) else None
                cache[key] = folders_named(manifest) if manifest else set()
            keep |= cache[key]
        except Exception as e:
            tell_unreadable(checkpoint, e, checkpoints / SHARDED_DIR)
            return None
    return keep


def collect(checkpoints: Path, cache: dict[tuple, set[str]]) -> list[Path]:
    """Delete the folders of checkpoints/sharded/ that this code wrote (named as OWN_FOLDER)
    and no checkpoint names (and unfinished ones): called between checkpoints, when no folder
    is being written; anything else there is left alone, with a warning. Returns them."""
    root = checkpoints / SHARDED_DIR
    if not root.is_dir():
        return []
    keep = named_folders(checkpoints, cache)
    if keep is None:
        return []
    removed = []
    for folder in root.iterdir():
        if f"{SHARDED_DIR}/{folder.name}" in keep or not mine(folder, OWN_FOLDER, is_dir=True):
            continue
        shutil.rmtree(folder, ignore_errors=True)
        removed.append(folder)
    return removed
