"""Checkpoints of tables TorchRec shards over several ranks: each rank writes and reads its own
shards through torch.distributed.checkpoint (DCP); no rank gathers a table to checkpoint it.

With trainer.embedding_backend=torchrec, trainer.devices > 1 and checkpoint.sharded=auto (the
default), every checkpoint's tables and fused optimizer state go to a DCP folder
checkpoints/sharded/<tag>/ that last.pt names (mtlrec.training.dcp_files: format, checks,
gathering); the dense part, the train state and the RNG stay in last.pt. One process
(trainer.devices=1) and checkpoint.sharded=gathered keep the ordinary layout (torchrec_backend
gathers the shards into last.pt).

Writing a checkpoint is a collective: rank 0 reaches `ShardedCheckpointer.write` from make_payload
(through `externalize`, as TableFiles for the native path), the other ranks from their fit hooks
(`ShardedPeerHooks`). The folder is written under <tag>.tmp, every file fsynced by DCP and hashed
by the rank that wrote it, and renamed to <tag> by rank 0 before it writes the last.pt that names
it; `collect` deletes the folders no checkpoint names. A resume (`restoring`) dcp.loads each
rank's shards in place.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from mtlrec.errors import MtlrecError
from mtlrec.models.torchrec_embedding import torchrec_layers
from mtlrec.training import best_files, dcp_files
from mtlrec.training.dcp_files import FUSED, MODEL, SHARDED_DIR, SHARDED_KEY, TEMP_SUFFIX
from mtlrec.training.table_files import TableFiles, TrackedTable, new_tag
from mtlrec.training.torchrec_backend import TorchRecOptimizer, peer_hooks, table_states
from mtlrec.training.torchrec_init import local_pieces, part_of
from mtlrec.training.torchrec_table_files import fused_table_rows

log = logging.getLogger(__name__)


def sharded_layout(layout: str, model: nn.Module) -> bool:
    """Whether this run's checkpoints keep its tables in DCP folders (module docstring)."""
    return (
        layout == "auto"
        and bool(getattr(model, "sharded_tables", None))
        and dist.is_initialized()
        and dist.get_world_size() > 1
    )


def local_tables(model: nn.Module) -> dict[str, Any]:
    """{model_state key: the table as this rank holds it (a ShardedTensor, or a data_parallel
    replica's tensor)} of every sharded layer, under the key a gathered checkpoint gives the full
    table."""
    prefix = {id(m): f"{name}." if name else "" for name, m in model.named_modules()}
    out: dict[str, Any] = {}
    for sharded in getattr(model, "sharded_tables", []):
        for j, state in enumerate(table_states(sharded.module)):
            out[f"{prefix[id(sharded.layer)]}tables.{j}.weight"] = state
    return out


class ShardedCheckpointer:
    """A run's checkpoint folders (module docstring); TableFiles' interface for RunRecorder."""

    def __init__(self, checkpoints: Path, model: nn.Module, optimizer: Any, is_main: bool):
        self.checkpoints, self.model, self.optimizer = Path(checkpoints), model, optimizer
        self.is_main = is_main
        self.best: dict[str, Any] | None = None  # where the best weights' tables are
        # keep_best kept the live tables as the best (`live_state`): the next folder holds them
        self.live_is_best = False
        self._named: dict[tuple, set[str]] = {}  # collect's cache
        # the table files of a one-process run resumed on several ranks: collected (none written)
        self._table_files = TableFiles(checkpoints, optimizer, None, lambda body, path: None)

    def adopt(self, payload: dict, as_drawn: bool = False) -> None:
        """Continue from a resumed checkpoint: its best tables' folder stays the best's
        (`as_drawn`, TableFiles': sharded tables are written whole, seeded or not)."""
        manifest = payload.get(SHARDED_KEY)
        self.best = manifest.get("best") if manifest else None

    def mark_best(self) -> None:
        """Nothing: `write` finds the best tables by comparing them with the live shards."""

    def collect(self) -> list[Path]:
        """The folders, and the files of tables/, that no checkpoint names any more (rank 0)."""
        if not self.is_main:
            return []
        return dcp_files.collect(self.checkpoints, self._named) + self._table_files.collect()

    def externalize(self, payload: dict, epoch: int) -> dict:
        """Rank 0, in make_payload: write the shards; the payload names the folder instead of
        holding the tables (and, when a folder holds them, the best weights' tables)."""
        train = payload.get("train_state")
        best_state = train["best_state"] if train else {}
        manifest = self.write(epoch, best_state)
        out = {**payload, SHARDED_KEY: manifest}
        if manifest["best"] is None and any(v.is_meta for v in best_state.values()):
            raise RuntimeError("the best weights' tables are in no folder (none was kept)")
        if manifest["best"] is not None and train is not None:
            kept = {k: v for k, v in best_state.items() if k not in manifest["best"]["keys"]}
            out["train_state"] = {**train, "best_state": kept}
        return out

    def write(self, epoch: int, best_state: dict[str, torch.Tensor]) -> dict[str, Any]:
        """Every rank: write this rank's shards to a new folder; the manifest (dcp_files)."""
        import torch.distributed.checkpoint as dcp

        started = time.perf_counter()
        tag = [new_tag(epoch) if self.is_main else ""]
        dist.broadcast_object_list(tag, src=0)
        folder = f"{SHARDED_DIR}/{tag[0]}"
        tables = local_tables(self.model)
        fused = (
            self.optimizer.fused.local_state()
            if isinstance(self.optimizer, TorchRecOptimizer)
            else {}
        )
        same_as_best = self._holds_best(tables, best_state)
        temp = self.checkpoints / (folder + TEMP_SUFFIX)
        state = {f"{MODEL}/{k}": v for k, v in tables.items()}
        state.update({f"{FUSED}/{k}": v for k, v in fused.items()})
        with dcp_files.writing_folder(temp):  # a failure: one line, the folder removed
            temp.mkdir(parents=True, exist_ok=True)
            dcp.save(state, storage_writer=dcp.FileSystemWriter(temp, sync_files=True))
            files, fused_keys = _written(temp, sorted(fused))
            if self.is_main:
                _publish(temp, self.checkpoints / folder)
        if self.is_main:  # train.log only: what a checkpoint of the shards costs
            size = sum((self.checkpoints / folder / name).stat().st_size for name in files)
            log.info(
                "checkpoint: %s, %.1f MiB from %d ranks in %.2fs",
                folder,
                size / 2**20,
                dist.get_world_size(),
                time.perf_counter() - started,
                extra={"console": False},
            )
        if same_as_best:  # this folder holds the best weights' tables from now on
            self.best = {"folder": folder, "files": files, "keys": sorted(tables)}
        best = (
            self.best
            if self.best is not None and set(self.best["keys"]) <= set(best_state)
            else None
        )
        return {
            "format": dcp_files.FORMAT,
            "folder": folder,
            "files": files,
            "model_keys": sorted(tables),
            "fused_keys": fused_keys,
            "best": best,
            "world_size": dist.get_world_size(),
        }

    def _holds_best(self, tables: dict[str, Any], best_state: dict[str, torch.Tensor]) -> bool:
        """Whether the live tables are the best weights' (a collective): said by keep_best since
        the last folder when the best weights keep their tables by reference (`live_state`),
        else compared (the tables of a run resumed from a checkpoint of before: values)."""
        if any(k in best_state and best_state[k].is_meta for k in tables):
            same, self.live_is_best = self.live_is_best, False
            return _on_every_rank(same)
        return _equal_everywhere(tables, best_state)

    # -- the best weights, their tables by reference (Trainer.keep_best, the end of fit) ---------
    def live_state(self) -> dict[str, torch.Tensor]:
        """What keep_best keeps: the model's state with each sharded table as a placeholder (a
        meta tensor: shape and dtype, no data), no rank holding a copy of a table; the folder of
        this epoch's checkpoint, written next, holds them (`_holds_best`)."""
        with tables_elsewhere(self.model, None):
            state = self.model.state_dict()
        self.live_is_best = True
        return {**state, **placeholders(local_tables(self.model))}

    def load_best(self, best: dict[str, torch.Tensor]) -> None:
        """The end of fit, every rank: the kept best weights into the model, the tables kept as
        placeholders from the best epoch's folder (each rank reads its own shards)."""
        held = best_files.by_files(best)  # the placeholders: here, tables in the best's folder
        if not held:
            self.model.load_state_dict(best)
            return
        if self.best is None or not held <= set(self.best["keys"]):
            raise RuntimeError(f"the best weights of {sorted(held)} are in no folder")
        folder = self.checkpoints / self.best["folder"]
        if not (folder / dcp_files.METADATA).is_file():
            raise MtlrecError(
                f"{folder}: the best epoch's sharded tables are missing (removed while the run "
                "trained), so its best weights cannot be restored; leave checkpoints/ alone "
                "while a run trains"
            )
        with tables_elsewhere(self.model, None):
            self.model.load_state_dict({k: v for k, v in best.items() if k not in held})
        manifest = {"folder": self.best["folder"], "model_keys": self.best["keys"]}
        _load_shards({**manifest, "fused_keys": []}, self.checkpoints / "best.pt", self.model, None)


def placeholders(tables: dict[str, Any]) -> dict[str, torch.Tensor]:
    """A stand-in of each table (a meta tensor: its full shape and dtype, no data)."""
    return {k: best_files.placeholder(v) for k, v in tables.items()}


def _equal_everywhere(tables: dict[str, Any], best_state: dict[str, torch.Tensor]) -> bool:
    """Whether the best weights' tables equal the live ones on every rank (a collective)."""
    same = bool(tables) and all(k in best_state for k in tables)
    if same:
        for key, value in tables.items():
            best = best_state[key]
            same = same and tuple(best.shape) == tuple(value.size())
            for offsets, piece in local_pieces(value):  # a replica: the whole table
                same = same and torch.equal(part_of(best, offsets, piece).cpu(), piece.cpu())
    return _on_every_rank(same)


def _on_every_rank(same: bool) -> bool:
    """Whether `same` holds on every rank (a collective)."""
    nccl = dist.get_backend() == "nccl"  # nccl reduces CUDA tensors only
    flag = torch.tensor([int(same)], device="cuda" if nccl else "cpu")
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item())


def _written(folder: Path, fused_keys: list[str]) -> tuple[dict[str, str], list[str]]:
    """({file: SHA-256} of every file DCP wrote to `folder`, the fused state's keys of all
    ranks): each rank hashes its own files (rank 0 also the metadata) and names the fused state
    it holds (a table on another rank has none here); every rank gets the whole of both."""
    rank = dist.get_rank()
    own = {
        p.name: dcp_files.file_sha256(p)
        for p in sorted(folder.iterdir())
        if p.name.startswith(f"__{rank}_") or (rank == 0 and p.name == dcp_files.METADATA)
    }
    every: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(every, (own, fused_keys))
    files = {name: digest for part, _ in every for name, digest in sorted(part.items())}
    return dict(sorted(files.items())), sorted({k for _, keys in every for k in keys})


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _publish(temp: Path, final: Path) -> None:
    """The complete folder under its final name, durably (before any last.pt names it); DCP
    fsynced its files (sync_files=True)."""
    _fsync_dir(temp)
    os.rename(temp, final)
    _fsync_dir(final.parent)


@contextmanager
def tables_elsewhere(model: nn.Module, optimizer: Any, active: bool = True) -> Iterator[None]:
    """While active: the model's state_dict has no sharded table, the optimizer's no fused
    state (they are in the DCP folder), and loading one does not ask for them."""
    layers = torchrec_layers(model) if active else []
    fused = getattr(optimizer, "fused", None) if active else None
    for layer in layers:
        layer.tables_in_state = False
    if fused is not None:
        fused.in_state = False
    try:
        yield
    finally:
        for layer in layers:
            layer.tables_in_state = True
        if fused is not None:
            fused.in_state = True


def payload_context(tables: Any, model: nn.Module, optimizer: Any) -> Any:
    """What make_payload runs in: tables_elsewhere when `tables` writes DCP folders."""
    return tables_elsewhere(model, optimizer, isinstance(tables, ShardedCheckpointer))


def checkpoint_files(
    checkpoints: Path,
    model: nn.Module,
    optimizer: Any,
    settings: Any,
    is_main: bool,
    write_file: Callable[[Any, Path], None],
) -> TableFiles | ShardedCheckpointer:
    """The checkpoint's table writer: DCP folders for sharded tables, else TableFiles."""
    if sharded_layout(settings.sharded, model):
        return ShardedCheckpointer(checkpoints, model, optimizer, is_main)
    rows = settings.table_files_min_rows if is_main else None
    fused = fused_table_rows(model, optimizer, rows)  # one process' TorchRec tables, tracked
    return GatheredTables(checkpoints, optimizer, rows, write_file, is_main, fused)


class GatheredTables(TableFiles):
    """TableFiles, which also deletes the DCP folders no checkpoint names any more: those of a
    sharded run's checkpoints before it was resumed in one process or with
    checkpoint.sharded=gathered (rank 0; no folder is written meanwhile)."""

    def __init__(
        self,
        checkpoints: Path,
        optimizer: Any,
        rows: int | None,
        write_file: Any,
        is_main: bool,
        extra: Sequence[TrackedTable] = (),
    ):
        super().__init__(checkpoints, optimizer, rows, write_file, extra)
        self.checkpoints, self.is_main = Path(checkpoints), is_main
        self._named: dict[tuple, set[str]] = {}  # collect's cache

    def collect(self) -> list[Path]:
        removed = super().collect()
        if self.is_main:  # a stat when the run never had a folder
            removed += dcp_files.collect(self.checkpoints, self._named)
        return removed


class ShardedPeerHooks:
    """The fit hooks of ranks other than 0: their part of each checkpoint's DCP folder."""

    def __init__(self, tables: ShardedCheckpointer):
        self.tables = tables

    def on_checkpoint(self, state: Any) -> str:
        self.tables.write(state.epoch, state.best_state)
        return "rank 0's checkpoint"

    def on_epoch_end(self, row: dict[str, Any], is_best: bool, state: Any) -> None:
        self.tables.write(state.epoch, state.best_state)


def best_shards(hooks: Any, trainer: Any) -> ShardedCheckpointer | None:
    """The folders that keep the best weights' sharded tables, from fit's hooks (None: the
    tables are not in DCP folders, or trainer.keep_best_per_task keeps each task's weights in
    full (per_task.keep), so the monitored best ones stay a copy too, as test_per_task loads
    them; else the best weights are values, or table files: training/best_files.py)."""
    tables = sharded_tables(hooks)
    return tables if not trainer.keep_best_per_task else None


def sharded_tables(hooks: Any) -> ShardedCheckpointer | None:
    """The DCP folders fit's hooks write the tables to (None: not in DCP folders). A resume
    from them keeps the best weights' tables there whatever the run keeps (`restoring`)."""
    tables = getattr(hooks, "tables", None)
    return tables if isinstance(tables, ShardedCheckpointer) else None


def load_best(trainer: Any, hooks: Any) -> bool:
    """The end of fit: the trainer's kept best weights into its model, each rank its shards
    from the best epoch's folder, when fit's hooks write DCP folders (False: they do not).
    A resume from such a folder keeps the best tables there (`restoring`) even where
    trainer.keep_best_per_task keeps copies: then the loaded weights are kept as a copy again,
    the weights test_per_task puts back at its end."""
    shards = sharded_tables(hooks)
    if shards is None:
        return False
    best = trainer.state.best_state
    shards.load_best(best)
    if trainer.best_shards is None and any(v.is_meta for v in best.values()):
        trainer.keep_best(trainer.state.epoch)
    return True


def fit_hooks(tables: Any, model: nn.Module, optimizer: Any) -> Any:
    """A rank other than 0's fit hooks (None: it takes no part in checkpoints)."""
    if isinstance(tables, ShardedCheckpointer):
        return ShardedPeerHooks(tables)
    return peer_hooks(model, optimizer)


@contextmanager
def restoring(
    payload: dict, path: Path, model: nn.Module, optimizer: Any, layout: str
) -> Iterator[dict]:
    """Around restore_training on every rank: a checkpoint with DCP folders has each rank's
    shards loaded in place (this run shards its tables too) or is gathered into the ordinary
    layout (this run does not: one process, checkpoint.sharded=gathered). Its files were
    verified by load_checkpoint."""
    manifest = payload.get(SHARDED_KEY)
    if manifest is None:
        yield payload
        return
    if not sharded_layout(layout, model):
        yield dcp_files.gather(payload, path)
        return
    _load_shards(manifest, path, model, optimizer)
    out = payload
    if manifest.get("best") and "train_state" in payload:
        # the best weights' tables stay in their folder (ShardedCheckpointer.adopt names it)
        live = local_tables(model)
        best = {
            **payload["train_state"]["best_state"],
            **placeholders({k: live[k] for k in manifest["best"]["keys"] if k in live}),
        }
        out = {**payload, "train_state": {**payload["train_state"], "best_state": best}}
    with tables_elsewhere(model, optimizer):
        yield out


def _load_shards(manifest: dict, path: Path, model: nn.Module, optimizer: Any) -> None:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.api import CheckpointException

    state = {f"{MODEL}/{k}": v for k, v in local_tables(model).items()}
    if isinstance(optimizer, TorchRecOptimizer):
        state.update({f"{FUSED}/{k}": v for k, v in optimizer.fused.local_state().items()})
    saved = {f"{MODEL}/{k}" for k in manifest["model_keys"]}
    saved |= {f"{FUSED}/{k}" for k in manifest["fused_keys"]}
    if not set(state) <= saved:  # a rank may hold no part of a table's optimizer state
        raise MtlrecError(
            f"{path}: its sharded tables do not fit the model (no {sorted(set(state) - saved)[0]}"
            "); resume with the run's own model and trainer.embedding_optimizer"
        )
    folder = path.parent / manifest["folder"]
    try:
        dcp.load(state, storage_reader=dcp_files.safe_reader(folder))
    except (Exception, CheckpointException) as e:  # CheckpointException: a BaseException
        raise MtlrecError(
            f"{path}: its sharded tables in {folder} do not fit this run's shards "
            f"({dcp_files.failure(e)}); resume with the run's own settings (written by "
            f"{manifest.get('world_size')} ranks: trainer.devices={manifest.get('world_size')})"
        ) from None
