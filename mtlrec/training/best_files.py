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

The files read were written by this process, or checked against their SHA-256 when it resumed
from them; they are not hashed again here (hashing a base is O(table)). Only a run that writes
its tables to files keeps them this way: with `checkpoint.table_files_min_rows=null`, without
checkpoints, on a DDP rank other than 0, with `trainer.ema_decay` (best.pt is written whole) and
for TorchRec's tables the best weights are a copy in memory, as before.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from mtlrec.training.checkpoint import TrainState, keep_weights
from mtlrec.training.table_files import MODEL_PREFIX, TableFiles, initial_rows, read_table_file

CHUNK_ROWS = 1 << 18  # rows restored at a time: the temporaries stay small


def placeholder(t: torch.Tensor) -> torch.Tensor:
    """A stand-in with `t`'s shape and dtype and no data (a meta tensor): any attempt to read
    or save its values fails loudly, never silently."""
    return torch.empty(t.shape, dtype=t.dtype, device="meta")


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


def load(model: nn.Module, best: dict[str, torch.Tensor], files: BestFiles | None) -> None:
    """Load kept best weights into `model`, the tables the files hold from the files."""
    held = by_files(best)
    if not held:
        model.load_state_dict(best)
        return
    if files is None:
        raise RuntimeError(f"best weights of {sorted(held)} are in table files, but none are open")
    # the held tables as they are now (a copy onto itself costs nothing: torch skips it), so a
    # layer that loads its tables all at once (TorchRec's) loads its other tables' best weights
    live = {k: v for k, v in model.state_dict().items() if k in held}
    model.load_state_dict({k: live[k] if k in held else v for k, v in best.items()})
    files.restore(held)


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
        self.weights = {
            key: by_storage[_pointer(v)]
            for key, v in model.state_dict().items()
            if _pointer(v) in by_storage
        }

    @property
    def keys(self) -> frozenset[str]:
        return frozenset(self.weights)

    def release(self, resume: TrainState | None) -> None:
        """A resumed run's best weights that the adopted files hold (call after
        TableFiles.adopt) become placeholders: the assembled copies go."""
        if resume is None or self.files is None or self.files.best is None:
            return  # nothing resumed, or its best weights were held inline: kept as they are
        held = {k for k in self.weights if self.files.shapes.get(MODEL_PREFIX + k)}
        resume.best_state = {
            k: placeholder(v) if k in held else v for k, v in resume.best_state.items()
        }

    @torch.no_grad()
    def restore(self, keys: set[str]) -> int:
        """Write the best epoch's values of the tables `keys` into the model's weights; returns
        the number of rows written (the rows changed since the best epoch's checkpoint)."""
        if self.files is None or not self.files.best:
            raise RuntimeError("no best epoch's table files to restore the best weights from")
        best, last = self.files.best, self.files.chain
        written = 0
        for key in sorted(keys):
            p, changed = self.weights[key]
            name = MODEL_PREFIX + key
            if last[: len(best)] == best:  # the newest chain continues the best epoch's
                later = [self._open(e)["rows"][name] for e in last[len(best) :]]
                since = changed.nonzero().squeeze(1)  # after the newest checkpoint
                rows = torch.cat([since, *later]).unique()
            else:  # a new base since the best epoch: no record of which rows changed
                rows = torch.arange(p.shape[0])
            bodies = [e if e["kind"] == "init" else self._open(e) for e in best]
            for chunk in rows.split(CHUNK_ROWS):
                p.index_copy_(0, chunk, _values_at(bodies, name, chunk))
            written += int(rows.numel())
        return written

    def _open(self, entry: dict[str, Any]) -> dict[str, Any]:
        """A table file's body, memory-mapped: only the pages of the rows read are loaded."""
        assert self.files is not None
        missing = (
            f"{entry['file']}, a table file of the best epoch, is missing (removed while the run "
            "trained), so its best weights cannot be restored; leave checkpoints/ alone while a "
            "run trains"
        )
        file = self.files.directory / entry["file"]
        return read_table_file(file, self.files.directory, missing, mmap=True)


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


def _pointer(t: torch.Tensor) -> tuple[int, int, tuple[int, ...]]:
    return (t.untyped_storage().data_ptr(), int(t.storage_offset()), tuple(t.shape))
