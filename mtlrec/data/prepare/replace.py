"""What `mtlrec prepare ... overwrite=true` may replace: only a prepared dataset mtlrec made.

`check_replaceable(path, inputs)` runs before any work, when `path` exists and overwrite is on,
and refuses in one line:

- the current directory or one of its ancestors (`dataset.path=~` or `.`);
- a directory that is, or holds, one of the raw inputs (`dataset.path` == `dataset.raw_dir`);
- a file, or a directory without spec.json (not a dataset at all);
- a directory holding anything mtlrec did not write there: every file must be listed in the
  dataset's checksums.json (or, for a dataset published before checksums, be one of the files
  a prepare writes). A user's note, a `.git`, a subdirectory: refused, never deleted.

A damaged dataset (a file changed since publishing) stays replaceable: replacing it is the
remedy its error line gives. The replacement itself (publish.py) moves the old dataset aside and
removes it only once the new one is in place.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from mtlrec.data.prepare.manifest import MANIFEST_FILE
from mtlrec.data.spec import SPEC_FILE
from mtlrec.errors import MtlrecError

# What a prepare writes (datasets published before checksums.json existed are judged by this).
PREPARED_FILES = frozenset(
    {SPEC_FILE, MANIFEST_FILE, "encoders.json", "vocab.parquet"}
    | {f"{s}.parquet" for s in ("train", "val", "test")}
)
_HOW = "choose another dataset.path, or move what you keep there elsewhere"


def _listed(path: Path) -> frozenset[str] | None:
    """The files the dataset's checksums.json lists, or None (missing or not readable)."""
    try:
        doc = json.loads((path / MANIFEST_FILE).read_text())
        return frozenset(str(n) for n in doc["files"]) | {MANIFEST_FILE}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def _foreign(path: Path, known: frozenset[str]) -> str | None:
    """The first entry under `path` mtlrec did not write there (a file or dir not in `known`)."""
    for root, dirs, files in os.walk(path):
        for name in sorted(dirs) + sorted(files):
            rel = (Path(root) / name).relative_to(path).as_posix()
            if name in dirs and any(k.startswith(rel + "/") for k in known):
                continue
            if rel not in known:
                return rel
    return None


def check_replaceable(path: Path, inputs: Iterable[str | Path] = ()) -> None:
    """One line unless `path` is a prepared dataset that overwrite=true may replace."""
    target = path.expanduser().resolve()
    here = Path.cwd().resolve()
    if target == here or target in here.parents:
        raise MtlrecError(
            f"dataset.path {path}: is the current directory or one of its parents; "
            f"overwrite=true replaces only a prepared dataset: {_HOW}"
        )
    for given in inputs:
        source = Path(given).expanduser().resolve()
        if target == source or target in source.parents:
            raise MtlrecError(
                f"dataset.path {path}: is or holds the raw input {given}; overwrite=true would "
                "delete it: write the prepared dataset to another dataset.path"
            )
    if not target.is_dir():
        raise MtlrecError(
            f"dataset.path {path}: is a file, not a prepared dataset; overwrite=true replaces "
            f"only a dataset mtlrec prepared: {_HOW}"
        )
    if not (target / SPEC_FILE).is_file():
        raise MtlrecError(
            f"dataset.path {path}: holds no {SPEC_FILE}, so it is not a prepared dataset; "
            f"overwrite=true replaces only a dataset mtlrec prepared: {_HOW}"
        )
    known = _listed(target) or PREPARED_FILES
    stray = _foreign(target, known)
    if stray is not None:
        raise MtlrecError(
            f"dataset.path {path}: holds {stray}, which mtlrec did not write there; "
            f"overwrite=true replaces only a dataset mtlrec prepared: {_HOW}"
        )


def raw_inputs(base: Path | None, files: Any) -> list[Path]:
    """The raw dir (dataset.raw_dir, typed) and the raw files (dataset.files: names under it or
    absolute) a dataset config reads: those that can be told from it."""
    found = [base] if base is not None else []
    names = files.values() if isinstance(files, dict) else files if isinstance(files, list) else []
    for name in names:
        if isinstance(name, str):
            p = Path(name).expanduser()
            found.append(p if p.is_absolute() or base is None else base / p)
    return found
