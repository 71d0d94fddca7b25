"""The best weights of the big tables kept as the best epoch's table files, not a copy in memory.

`Trainer.fit` keeps the best epoch's weights to load them back before the test. For a table
whose checkpoints go to base + delta files (training/table_files.py), a copy would cost one
memcpy of the table per best epoch and a second table of RAM. Instead the kept state holds a
placeholder for it (a tensor on the meta device: shape and dtype, no data), and:

- a checkpoint's TrainState.best_state turns the placeholder into a reference to the best
  epoch's files (TableFiles.externalize, chain "best"), as it did for the copy;
- at the end of fit, `BestFiles.restore` writes the best values back into the rows that changed
  since the best epoch's checkpoint: the rows of the delta files written after it (the chain of
  the newest checkpoint extends the best epoch's) and any row changed since the newest one.
  Their best values are read from the best epoch's files through a memory map (a chain that
  starts at the tables' seeded init draws those rows' init), so only those rows are read:
  O(rows changed since the best epoch). After a new base (a compaction) since the best epoch,
  every row is read back from the best epoch's chain, in chunks;
- a resumed run drops the best weights it assembled from the files (`release`).

Each task's own best weights (`trainer.keep_best_per_task`, training/per_task.py) are kept the
same way: placeholders for these tables, and the chain of files of the task's best epoch (the
chain its best_<task>.pt names: `mark_task`; after a resume, read from best_<task>.pt without
assembling it: `resumed_best`). Loading a task's weights writes only the rows that can differ
between the chain the tables hold then and the task's: the rows of the deltas past the part the
two chains share (every row when their bases differ). So no table is ever held twice.

The files read were written by this process, or checked against their SHA-256 when it resumed
from them (a resumed best_<task>.pt's other files: when it is read); they are not hashed again
here (hashing a base is O(table)). Only a run that writes its tables to files keeps them this
way: with `checkpoint.table_files_min_rows=null`, without checkpoints, on a DDP rank other than
0 and with `trainer.ema_decay` (best.pt is written whole) the best weights are a copy in memory,
as before. Several ranks' TorchRec tables live in DCP folders instead: the monitored best ones
are kept by reference there (torchrec_checkpoint.best_shards), each task's are copies.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from mtlrec.training.checkpoint import MODEL_KEY, TrainState, keep_weights, load_checkpoint
from mtlrec.training.table_files import (
    MODEL_PREFIX,
    REF_KEY,
    TABLES_KEY,
    TableFiles,
    initial_rows,
    read_table_file,
)

CHUNK_ROWS = 1 << 18  # rows restored at a time: the temporaries stay small
Chain = list[dict[str, Any]]  # a checkpoint's table files: base (or init entry), then deltas


def placeholder(t: torch.Tensor) -> torch.Tensor:
    """A stand-in with `t`'s shape and dtype and no data (a meta tensor): any attempt to read
    or save its values fails loudly, never silently."""
    return torch.empty(tuple(t.size()), dtype=t.dtype, device="meta")  # a ShardedTensor's too


def by_files(state: dict[str, torch.Tensor]) -> set[str]:
    """The keys of a kept best state whose values the table files hold."""
    return {k for k, v in state.items() if v.is_meta}


def keep(
    kept: dict[str, torch.Tensor], state: dict[str, torch.Tensor], files: BestFiles | None
) -> dict[str, torch.Tensor]:
    """`state` (the model's state dict) kept as the best weights: the tables `files` holds as
    placeholders, the rest copied into the previous `kept` tensors (checkpoint.keep_weights)."""
    held = files.keys if files is not None else frozenset()
    copied = keep_weights(
        {k: v for k, v in kept.items() if k not in held},
        {k: v for k, v in state.items() if k not in held},
    )
    return {k: placeholder(v) if k in held else copied[k] for k, v in state.items()}


def load(
    model: nn.Module,
    best: dict[str, torch.Tensor],
    files: BestFiles | None,
    chain: Chain | None = None,
    holding: Chain | None = None,
) -> Chain:
    """Load kept best weights into `model`, the tables the files hold from the files: from
    `chain` (default: the best epoch's), given the chain the tables `holding` now (None: the
    live tables of the training; BestFiles.restore). Returns the chain the tables hold after
    ([]: not one of the files' chains, e.g. weights loaded whole)."""
    held = by_files(best)
    if not held:
        model.load_state_dict(best)
        return []
    if files is None:
        raise RuntimeError(f"best weights of {sorted(held)} are in table files, but none are open")
    # the held tables as they are now (a copy onto itself costs nothing: torch skips it), so a
    # layer that loads its tables all at once (TorchRec's) loads its other tables' best weights
    live = {k: v for k, v in model.state_dict().items() if k in held}
    model.load_state_dict({k: live[k] if k in held else v for k, v in best.items()})
    files.restore(held, chain, holding)
    return files.best_chain if chain is None else chain


class BestFiles:
    """Which state-dict keys of the model the table files keep the best weights of, and how to
    put those weights back (module docstring). Only with TableFiles (not the DCP folders of
    sharded tables) and when `saved` (the model best.pt holds) is `model` (no EMA): best.pt is
    then the best epoch's last.pt, whose files hold them."""

    def __init__(self, tables: object, model: nn.Module, saved: nn.Module):
        self.files = tables if isinstance(tables, TableFiles) and saved is model else None
        # each tracked table's weight and its rows changed since the newest checkpoint
        tracked: list[tuple[torch.Tensor, torch.Tensor]] = []
        if self.files is not None:
            tracked += [(p.data, opt.changed[p]) for opt, p in self.files.tables]
            tracked += [(dict(t.tensors())["weight"], t.changed) for t in self.files.extra]
        by_storage = {_pointer(w): (w, changed) for w, changed in tracked}
        # no tracked table, no state_dict: a sharded model's would gather every table on every
        # rank (torchrec_backend.full_tables), at start-up the peak of its memory
        state = model.state_dict() if by_storage else {}
        self.weights = {
            key: by_storage[_pointer(v)] for key, v in state.items() if _pointer(v) in by_storage
        }
        self.task_chains: dict[str, Chain] = {}  # task -> the files of its best epoch
        self.verified: set[str] = set()  # files this process wrote or checked (SHA-256)

    @property
    def keys(self) -> frozenset[str]:
        return frozenset(self.weights)

    def release(self, resume: TrainState | None) -> None:
        """A resumed run's best weights that the adopted files hold (call after
        TableFiles.adopt) become placeholders: the assembled copies go."""
        if self.files is not None:  # the resumed checkpoint's files: checked when it loaded
            self.verified |= _names(self.files.chain) | _names(self.files.best or [])
        if resume is None or self.files is None or self.files.best is None:
            return  # nothing resumed, or its best weights were held inline: kept as they are
        held = {k for k in self.weights if self.files.shapes.get(MODEL_PREFIX + k)}
        resume.best_state = {
            k: placeholder(v) if k in held else v for k, v in resume.best_state.items()
        }

    @property
    def best_chain(self) -> Chain:
        """The files of the best epoch's checkpoint."""
        if self.files is None or not self.files.best:
            raise RuntimeError("no best epoch's table files to restore the best weights from")
        return self.files.best

    def mark_task(self, task: str) -> None:
        """The checkpoint just written is `task`'s best epoch's (trainer.keep_best_per_task):
        its files hold the task's best weights of the tables."""
        if self.files is not None and self.files.tracking:
            self.task_chains[task] = list(self.files.chain)
            self.verified |= _names(self.files.chain)

    @torch.no_grad()
    def restore(
        self, keys: set[str], chain: Chain | None = None, holding: Chain | None = None
    ) -> int:
        """Write the values the files of `chain` (default: the best epoch's) hold into the
        model's tables `keys`, which hold `holding`'s now (None: they are the live tables, the
        newest checkpoint's plus the rows changed since); returns the number of rows written:
        those that can differ (module docstring)."""
        target = self.best_chain if chain is None else chain
        written = 0
        for key in sorted(keys):
            p, _ = self.weights[key]
            rows = self._differing_rows(key, target, holding)
            if rows.numel() == 0:
                continue
            bodies = [e if e["kind"] == "init" else self._open(e) for e in target]
            for chunk in rows.split(CHUNK_ROWS):
                p.index_copy_(0, chunk, _values_at(bodies, MODEL_PREFIX + key, chunk))
            written += int(rows.numel())
        return written

    def _differing_rows(self, key: str, target: Chain, holding: Chain | None) -> torch.Tensor:
        """The rows of table `key` whose values may differ between `holding`'s chain (None: the
        live table) and `target`: those of the deltas past the entries both chains share, and
        for the live table those changed since the newest checkpoint; every row when the two
        chains start at different bases (a compaction: no record of which rows changed)."""
        p, changed = self.weights[key]
        assert self.files is not None
        now = self.files.chain if holding is None else holding
        shared = _shared_entries(now, target)
        if shared == 0:
            return torch.arange(p.shape[0])
        name = MODEL_PREFIX + key
        rows = [self._open(e)["rows"][name] for e in (*now[shared:], *target[shared:])]
        if holding is None:
            rows.append(changed.nonzero().squeeze(1))
        return torch.cat(rows).unique() if rows else torch.zeros(0, dtype=torch.long)

    def resumed_best(self, path: Path) -> tuple[dict[str, torch.Tensor], Chain] | None:
        """A task's best weights from its checkpoint `path` (an epoch before a resume), its
        tables not assembled: the checkpoint's other tensors, placeholders for the tables the
        files hold, and the chain of files that holds them (each file not yet checked checked
        against its SHA-256 now). None when its tables are not those references: load it whole."""
        if self.files is None or not self.files.tracking:
            return None
        payload = load_checkpoint(path, tables=False)
        state, chains = payload[MODEL_KEY], payload.get(TABLES_KEY, {}).get("chains", {})
        refs = {k for k, v in state.items() if isinstance(v, dict)}
        wanted = {k: {REF_KEY: MODEL_PREFIX + k, "chain": "last"} for k in self.keys}
        if refs != self.keys or any(state[k] != ref for k, ref in wanted.items()):
            return None
        chain = list(chains["last"])
        for entry in chain:
            if entry["file"] and entry["file"] not in self.verified:
                self._open(entry, path, entry["sha256"])
                self.verified.add(entry["file"])
        live = self.weights
        return {k: placeholder(live[k][0]) if k in refs else v for k, v in state.items()}, chain

    def _open(
        self, entry: dict[str, Any], source: Path | None = None, sha256: str | None = None
    ) -> dict[str, Any]:
        """A table file's body, memory-mapped: only the pages of the rows read are loaded.
        `sha256`: checked first (a file this process neither wrote nor checked yet)."""
        assert self.files is not None
        missing = (
            f"{entry['file']}, a table file of the best epoch, is missing (removed while the run "
            "trained), so its best weights cannot be restored; leave checkpoints/ alone while a "
            "run trains"
        )
        file = self.files.directory / entry["file"]
        return read_table_file(
            file, source or self.files.directory, missing, sha256=sha256, mmap=True
        )


def _values_at(chain: list[dict[str, Any]], name: str, rows: torch.Tensor) -> torch.Tensor:
    """The values of `rows` of tensor `name` as a chain has them: its base (a file's body, or
    an "init" entry: the seeded init drawn for those rows), then its deltas' bodies in order."""
    base = chain[0]
    if base["kind"] == "init":
        values = initial_rows(base, name, rows)
    else:
        values = base["values"][name].index_select(0, rows)
    for body in chain[1:]:
        ids = body["rows"][name]  # sorted (RowAdam.take_changed)
        if ids.numel() == 0:
            continue
        at = torch.searchsorted(ids, rows).clamp_(max=ids.numel() - 1)
        hit = ids[at] == rows
        values[hit] = body["values"][name].index_select(0, at[hit])
    return values


def _shared_entries(a: Chain, b: Chain) -> int:
    """How many first entries two chains have in common."""
    n = min(len(a), len(b))
    return next((i for i in range(n) if a[i] != b[i]), n)


def _names(chain: Chain) -> set[str]:
    return {e["file"] for e in chain if e["file"]}


def _pointer(t: torch.Tensor) -> tuple[int, int, tuple[int, ...]]:
    return (t.untyped_storage().data_ptr(), int(t.storage_offset()), tuple(t.shape))
