"""Big embedding tables in checkpoints: a base file plus one file of changed rows per checkpoint.

A table trained by RowAdam (`trainer.embedding_optimizer=sparse_adam`, on CPU) with at least
`checkpoint.table_files_min_rows` rows is not stored inside last.pt. Its weight, its packed Adam
moments and its per-row last_step go to checkpoints/tables/ as a chain: a base, then per
checkpoint one delta file holding only the rows changed since the previous one (their ids and
their values; RowAdam marks a row changed when a step, a catch-up or the epoch's flush moves it).
In a new run (no resume, no init_from) whose tracked tables all hold their seeded init
(mtlrec/models/seeded_init.py: tables of 100k+ rows) the base is an "init" entry and no file:
each weight's generator seed, std and fingerprint, and zeros for the optimizer state, so even
the first checkpoint writes only the rows changed since the start. Otherwise the first
checkpoint writes a base file (every row). Once the deltas since the base hold more than
COMPACT_FRACTION of the table's rows, the next checkpoint writes a new base file. In the payload each such tensor becomes a
reference ({REF_KEY: name, "chain": "last" | "best"}) and TABLES_KEY lists the files each chain
is assembled from (base first, deltas in order) with each file's SHA-256, taken over the bytes
written, never over the whole table. So:

- an epoch's end writes and hashes O(rows changed), not O(vocabulary);
- best.pt, a hard link to the best epoch's last.pt, names that epoch's files; a later last.pt's
  best weights (TrainState.best_state) reference the same files (chain "best"), no full copy;
- `assemble` (called by checkpoint.load_checkpoint) turns every reference back into the full
  tensor after checking each file's SHA-256 (an init entry: the weight drawn again, checked
  against its fingerprint): every reader sees the ordinary payload;
- a file is complete on disk (temp + fsync + rename) before the last.pt that names it, and
  `collect` deletes only files it wrote (OWN_FILE) that no checkpoint of the dir names (a
  user's file there is left alone): a kill -9 at any instant
  leaves last.pt or last.prev.pt loadable with all its files.
"""

from __future__ import annotations

import hashlib
import logging
import re
import secrets
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import torch

from mtlrec.errors import MtlrecError
from mtlrec.models.seeded_init import SeededInit, fingerprint, seeded_init_of
from mtlrec.training.row_adam import RowAdam, untouched_zeros

log = logging.getLogger(__name__)

TABLES_KEY = "table_files"  # payload key: {"chains": {name: [file entry]}, "best": chain name}
REF_KEY = "table_ref"
TABLES_DIR = "tables"
FILE_FORMAT = "mtlrec-table-rows"
COMPACT_FRACTION = 0.5  # deltas holding more rows than this fraction of the tables: a new base
# what a checkpoint of epoch N names the files (tables/) and DCP folders (sharded/) it writes
# (new_tag): `collect` deletes nothing else there, so a user's file in them is left alone
OWN_TAG = r"e\d+-[0-9a-f]{12}"
OWN_FILE = re.compile(rf"{OWN_TAG}\.(base|delta)\.pt")
BEST_PREFIX = "train_state/best_state/"
MODEL_PREFIX = "model_state/"


class TrackedTable(Protocol):
    """A table that is not a RowAdam parameter (TorchRec's fused tables, training/
    torchrec_table_files.py): the payload tensors of its rows (its "weight" first) and the rows
    changed since the last take_changed (`changed`: a bool per row; take_changed: sorted ids)."""

    rows: int
    changed: torch.Tensor
    seeded: SeededInit | None  # how its weight was drawn (None: not seeded)

    def fresh(self) -> bool:
        """Its optimizer state is as at the start (zeros)."""
        ...

    def tensors(self) -> list[tuple[str, torch.Tensor]]: ...

    def take_changed(self) -> torch.Tensor: ...


class TableFiles:
    """Writes the big tables of a run's checkpoints as base + delta files (module docstring).
    `extra`: tables tracked besides the RowAdam ones (TrackedTable)."""

    def __init__(
        self,
        directory: Path,
        optimizer: torch.optim.Optimizer,
        min_rows: int | None,
        write_file: Callable[[Any, Path], None],
        extra: Sequence[TrackedTable] = (),
    ):
        self.directory = Path(directory) / TABLES_DIR
        parts = getattr(optimizer, "optimizers", [optimizer])
        self.tables = [
            (opt, p)
            for opt in parts
            if isinstance(opt, RowAdam)
            for p in opt.group_of
            if min_rows is not None and p.device.type == "cpu" and p.shape[0] >= min_rows
        ]
        self.extra = [t for t in extra if min_rows is not None and t.rows >= min_rows]
        self.write_file = write_file
        self.chain: list[dict[str, Any]] = []  # the files of the newest checkpoint's tables
        self.best: list[dict[str, Any]] | None = None  # the files of the best epoch's
        self.shapes: dict[str, list[int]] = {}  # name -> shape of what the chain holds
        self._referenced: dict[tuple[int, int, int], set[str]] = {}  # collect's cache
        self.seeded: dict[int, SeededInit] = {}  # table -> its init, until the first checkpoint

    def _still_initial(self) -> dict[int, SeededInit]:
        """table index -> its seeded init, when every tracked table was seeded and still holds
        that init (its sampled rows) and a fresh optimizer state: the first checkpoint's base is
        then an "init" entry, no file. Else (any table not seeded or already changed) {}."""
        inits = {i: seeded_init_of(p) for i, (_, p) in enumerate(self.tables)}
        fresh = all(
            init is not None
            and int(opt.state[p]["step"]) == 0
            and fingerprint(p.data) == init.fingerprint
            for (opt, p), init in zip(self.tables, inits.values(), strict=True)
        )
        for k, table in enumerate(self.extra, start=len(self.tables)):
            inits[k] = init = table.seeded
            weight = dict(table.tensors())["weight"]
            fresh = fresh and init is not None and table.fresh()
            fresh = fresh and init is not None and fingerprint(weight) == init.fingerprint
        return {i: init for i, init in inits.items() if init is not None} if fresh else {}

    def adopt(self, payload: dict, as_drawn: bool = False) -> None:
        """Continue the chain of a resumed checkpoint: the optimizer state equals it now. A new
        run (payload {}) whose weights are as the model drew them (`as_drawn`: no init_from, the
        caller knows) starts its chain at its tables' seeded init instead of a base file."""
        if not payload and as_drawn:
            self.seeded = self._still_initial()
        info = payload.get(TABLES_KEY)
        if info is None or not self.tracking:
            return
        chains = info["chains"]
        self.chain = list(chains.get("last", []))
        self.best = list(chains[info["best"]]) if info.get("best") else None
        self.shapes = dict(info.get("shapes", {}))

    @property
    def tracking(self) -> bool:
        return bool(self.tables or self.extra)

    def mark_best(self) -> None:
        """The checkpoint just written is the best epoch's: its files hold the best weights."""
        self.best = list(self.chain) if self.tracking else None

    def externalize(self, payload: dict, epoch: int) -> dict:
        """The payload with the tracked tables' tensors as references, after writing their
        changed rows (or a base) to a new file of tables/."""
        if not self.tracking:
            return payload
        names: dict[tuple, str] = {}  # tensor identity -> its name (first payload path)
        tracked = {_identity(t): (i, role) for i, role, t in self._tracked_tensors()}
        rows = [opt.take_changed(p) for opt, p in self.tables]
        rows += [t.take_changed() for t in self.extra]

        def name_of(path: str, t: torch.Tensor) -> str | None:
            key = _identity(t)
            if key in tracked:
                return names.setdefault(key, path)
            return None

        found: dict[str, int] = {}
        roles: dict[str, str] = {}
        for path, t in _walk_tensors(payload):
            name = name_of(path, t)
            if name == path:
                found[name], roles[name] = tracked[_identity(t)]
        shapes = {n: list(t.shape) for n, t in _walk_tensors(payload) if n in found}
        if not self.chain and self.seeded:  # a new run's first checkpoint: its init, no file
            tensors = dict(_walk_tensors(payload))
            self.chain = [self._init_entry(found, roles, tensors)]
            self.shapes, self.seeded = shapes, {}
        entry = self._write(payload, found, shapes, rows, epoch)
        self.chain = [entry] if entry["kind"] == "base" else [*self.chain, entry]
        self.shapes = shapes
        best_used = False

        def replace(path: str, t: torch.Tensor) -> Any:
            nonlocal best_used
            name = name_of(path, t)
            if name is not None:
                return {REF_KEY: name, "chain": "last"}
            if path.startswith(BEST_PREFIX) and self.best is not None:
                model_name = MODEL_PREFIX + path[len(BEST_PREFIX) :]
                if self.shapes.get(model_name) == list(t.shape):
                    best_used = True
                    return {REF_KEY: model_name, "chain": "best"}
            return t

        out = _map_tensors(payload, "", replace)
        shares_last = any(n.startswith(BEST_PREFIX) for n in _ref_paths(out, "last"))
        chains = {"last": self.chain, **({"best": self.best} if best_used else {})}
        best = "best" if best_used else ("last" if shares_last else None)
        out[TABLES_KEY] = {"chains": chains, "best": best, "shapes": shapes}
        return out

    def _tracked_tensors(self) -> list[tuple[int, str, torch.Tensor]]:
        out = []
        for i, (opt, p) in enumerate(self.tables):
            state = opt.state[p]
            out += [(i, "weight", p.data), (i, "moments", state["moments"])]
            out.append((i, "last_step", state["last_step"]))
        for k, table in enumerate(self.extra, start=len(self.tables)):
            out += [(k, role, t) for role, t in table.tensors()]
        return out

    def _init_entry(
        self, found: dict[str, int], roles: dict[str, str], tensors: dict[str, torch.Tensor]
    ) -> dict[str, Any]:
        """The chain's first entry for tables still as initialised: each weight's seeded init,
        zeros for the optimizer's moments and last steps (RowAdam's fresh state)."""
        fills: dict[str, dict[str, Any]] = {}
        for name, i in found.items():
            t = tensors[name]
            fills[name] = {"shape": list(t.shape), "dtype": str(t.dtype).removeprefix("torch.")}
            if roles[name] == "weight":
                fills[name]["seeded"] = self.seeded[i].to_dict()
        return {"file": None, "kind": "init", "rows": 0, "sha256": None, "fills": fills}

    def _write(
        self,
        payload: dict,
        found: dict[str, int],
        shapes: dict[str, list[int]],
        rows: list[torch.Tensor],
        epoch: int,
    ) -> dict[str, Any]:
        tensors = dict(_walk_tensors(payload))
        table_rows = sum(p.shape[0] for _, p in self.tables) + sum(t.rows for t in self.extra)
        since_base = sum(e["rows"] for e in self.chain) + sum(int(r.numel()) for r in rows)
        base = not self.chain or shapes != self.shapes or since_base > COMPACT_FRACTION * table_rows
        if base:
            body: dict[str, Any] = {"values": {n: tensors[n] for n in found}}
            written = 0
        else:
            ids = {n: rows[i] for n, i in found.items()}
            body = {"rows": ids, "values": {n: tensors[n].index_select(0, ids[n]) for n in ids}}
            written = sum(int(r.numel()) for r in rows)
        kind = "base" if base else "delta"
        path = self.directory / f"{new_tag(epoch)}.{kind}.pt"
        self.write_file({"format": FILE_FORMAT, "kind": kind, **body}, path)
        return {"file": path.name, "kind": kind, "rows": written, "sha256": file_digest(path)}

    def collect(self) -> list[Path]:
        """Delete the files of tables/ that this code wrote (their names: OWN_FILE) and no
        checkpoint of the dir names (any unreadable checkpoint: delete nothing); a file of
        another name is left alone, with a warning. Returns the deleted."""
        if not self.directory.is_dir():
            return []
        keep: set[str] = set()
        for checkpoint in self.directory.parent.glob("*.pt"):
            names = self._names_in(checkpoint)
            if names is None:
                return []
            keep |= names
        removed = []
        for path in self.directory.iterdir():
            if path.name in keep or not mine(path, OWN_FILE, is_dir=False):
                continue
            path.unlink(missing_ok=True)
            removed.append(path)
        return removed

    def _names_in(self, checkpoint: Path) -> set[str] | None:
        try:
            st = checkpoint.stat()
            key = (st.st_ino, st.st_mtime_ns, st.st_size)
            if key not in self._referenced:
                payload = torch.load(checkpoint, map_location="cpu", weights_only=True, mmap=True)
                self._referenced[key] = files_named(payload)
            return self._referenced[key]
        except Exception as e:  # a checkpoint being replaced, foreign or damaged: keep all
            tell_unreadable(checkpoint, e, self.directory)
            return None


def files_named(payload: dict[str, Any]) -> set[str]:
    """The table files (names in tables/) a checkpoint's chains name; an "init" entry names none."""
    chains = payload.get(TABLES_KEY, {}).get("chains", {})
    return {e["file"] for c in chains.values() for e in c if e.get("file")}


def new_tag(epoch: int) -> str:
    """The unique stem of a checkpoint's table file or DCP folder (OWN_TAG matches it)."""
    return f"e{epoch}-{secrets.token_hex(6)}"


_told: set[Path] = set()  # the foreign entries warned about (once per process each)


def tell_unreadable(checkpoint: Path, error: Exception, folder: Path) -> None:
    """A *.pt of checkpoints/ that cannot be read stops `collect` (it may name files of
    `folder`): deleting nothing is safe but would let `folder` grow unseen, so one warning line
    the first time (a checkpoint being replaced is read again at the next collect)."""
    if checkpoint in _told:
        return
    _told.add(checkpoint)
    log.warning(
        "%s cannot be read as a checkpoint (%s), so nothing in %s is deleted while it is "
        "there; move it out of checkpoints/ if it is not one",
        checkpoint,
        f"{type(error).__name__}: {error}".splitlines()[0],
        folder,
    )


def mine(path: Path, own: re.Pattern[str], is_dir: bool) -> bool:
    """Whether `path`, in a folder of checkpoints/ that `collect` cleans, is what mtlrec wrote
    there (its name matches `own`, and it is a folder or a file as `is_dir` says). Anything else
    is a user's and is never deleted: one warning line the first time it is met."""
    if own.fullmatch(path.name) and path.is_dir() == is_dir and not path.is_symlink():
        return True
    if path not in _told and not path.name.startswith("."):  # dot-named: atomic writes' temps
        _told.add(path)
        log.warning(
            "%s: not written by mtlrec, so left alone (checkpoints/%s/ holds what mtlrec "
            "writes; keep other files elsewhere)",
            path,
            path.parent.name,
        )
    return False


def assemble(payload: dict, path: Path) -> dict:
    """Every table reference of a loaded checkpoint replaced by its full tensor (files checked
    against their SHA-256); a payload without references is returned as it is."""
    info = payload.get(TABLES_KEY)
    if info is None:
        return payload
    wanted: dict[str, set[str]] = {}
    for _, ref in _refs(payload):
        wanted.setdefault(ref["chain"], set()).add(ref[REF_KEY])
    full = {
        chain: _assemble_chain(info["chains"][chain], names, path)
        for chain, names in wanted.items()
    }

    def restore(obj: Any) -> Any:
        if isinstance(obj, dict) and REF_KEY in obj:
            return full[obj["chain"]][obj[REF_KEY]]
        if isinstance(obj, dict):
            return {k: restore(v) for k, v in obj.items()}
        if type(obj) in (list, tuple):
            return type(obj)(restore(v) for v in obj)
        return obj

    return restore(payload)


def _assemble_chain(entries: list[dict], names: set[str], checkpoint: Path) -> dict:
    out: dict[str, torch.Tensor] = {}
    for entry in entries:
        if entry["kind"] == "init":
            out = {name: _initial(name, entry, checkpoint) for name in names}
            continue
        file = checkpoint.parent / TABLES_DIR / entry["file"]
        missing = (
            f"its table file {file} is missing (a checkpoint is its .pt file plus the files of "
            "tables/ it names); use an older checkpoint"
        )
        body = read_table_file(file, checkpoint, missing, sha256=entry["sha256"])
        for name in names:
            values = body["values"].get(name)
            if values is None:
                raise MtlrecError(f"{checkpoint}: table file {entry['file']} lacks {name}")
            if entry["kind"] == "base":
                out[name] = values
            else:
                out[name].index_copy_(0, body["rows"][name], values)
    return out


def _initial(name: str, entry: dict, checkpoint: Path) -> torch.Tensor:
    """A tensor of an "init" entry: a weight drawn again from its seeded init (checked against
    its fingerprint), or the zeros of a fresh optimizer state."""
    fill = entry.get("fills", {}).get(name)
    if fill is None:
        raise MtlrecError(f"{checkpoint}: its table files lack {name} (no init entry for it)")
    try:
        dtype = getattr(torch, str(fill["dtype"]))
        if not isinstance(dtype, torch.dtype):
            raise ValueError(f"dtype {fill['dtype']!r}")
        if "seeded" not in fill:  # pages zeroed by the kernel when touched: no 2.7 GB fill
            return untouched_zeros(list(fill["shape"]), dtype)
        init = SeededInit.from_dict(fill["seeded"])
        weight = init.draw(fill["shape"], dtype)
    except (AttributeError, KeyError, TypeError, ValueError, RuntimeError) as e:  # edited/foreign
        raise MtlrecError(
            f"{checkpoint}: the init entry of table {name} is malformed ({type(e).__name__}: "
            f"{e}); use an older checkpoint"
        ) from None
    if fingerprint(weight) != init.fingerprint:
        raise MtlrecError(
            f"{checkpoint}: table {name} drawn again from its seeded init (seed {init.seed}) does "
            "not match the fingerprint taken when it was first drawn; use an older checkpoint"
        )
    return weight


def initial_rows(entry: dict, name: str, rows: torch.Tensor) -> torch.Tensor:
    """The values of `rows` of the tensor `name` as an "init" chain entry holds them: a weight's
    seeded init drawn for the chunks of those rows only, zeros for the optimizer state."""
    fill = entry["fills"][name]
    dtype = getattr(torch, str(fill["dtype"]))
    if "seeded" not in fill:
        return torch.zeros([len(rows), *fill["shape"][1:]], dtype=dtype)
    return SeededInit.from_dict(fill["seeded"]).draw_rows(fill["shape"], rows, dtype)


def read_table_file(
    file: Path, source: Path, missing: str, *, sha256: str | None = None, mmap: bool = False
) -> dict[str, Any]:
    """The body of the table file `file` that `source` (a checkpoint, or the tables/ of the run
    that wrote it) names, after checking that it is there (else one line: `{source}: {missing}`),
    that its bytes match `sha256` when given (a file this process wrote is not hashed again:
    hashing a base is O(table)) and that it is a table file. `mmap`: only the pages read load."""
    if not file.is_file():
        raise MtlrecError(f"{source}: {missing}")
    if sha256 is not None and file_digest(file) != sha256:
        raise MtlrecError(
            f"{source}: table file {file} does not match its SHA-256 in the checkpoint (the "
            "file is corrupt); use an older checkpoint"
        )
    try:
        body = torch.load(file, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception:  # damaged (a file not hashed here: truncated, garbage) or foreign
        body = None
    if not isinstance(body, dict) or body.get("format") != FILE_FORMAT:
        raise MtlrecError(f"{source}: {file} is not an mtlrec table file")
    return body


def file_digest(path: Path, chunk: int = 1 << 22) -> str:
    """SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _identity(t: torch.Tensor) -> tuple:
    return (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.dtype)


def _walk_tensors(obj: Any, prefix: str = "") -> list[tuple[str, torch.Tensor]]:
    out: list[tuple[str, torch.Tensor]] = []

    def keep(path: str, t: torch.Tensor) -> torch.Tensor:
        out.append((path, t))
        return t

    _map_tensors(obj, prefix, keep)
    return out


def _map_tensors(obj: Any, prefix: str, fn: Callable[[str, torch.Tensor], Any]) -> Any:
    """A copy of `obj` with each tensor replaced by fn(path, tensor); containers are rebuilt
    (the optimizer's state_dict shares its dicts with the live optimizer: never mutated)."""
    if torch.is_tensor(obj):
        return fn(prefix, obj)
    if isinstance(obj, dict):
        return {
            k: _map_tensors(v, f"{prefix}/{k}" if prefix else str(k), fn) for k, v in obj.items()
        }
    if type(obj) in (list, tuple):
        return type(obj)(_map_tensors(v, f"{prefix}[{i}]", fn) for i, v in enumerate(obj))
    return obj


def _refs(obj: Any, prefix: str = "") -> list[tuple[str, dict]]:
    if isinstance(obj, dict) and REF_KEY in obj:
        return [(prefix, obj)]
    if isinstance(obj, dict):
        return [r for k, v in obj.items() for r in _refs(v, f"{prefix}/{k}" if prefix else str(k))]
    if type(obj) in (list, tuple):
        return [r for i, v in enumerate(obj) for r in _refs(v, f"{prefix}[{i}]")]
    return []


def _ref_paths(obj: Any, chain: str) -> list[str]:
    return [p for p, ref in _refs(obj) if ref["chain"] == chain]
