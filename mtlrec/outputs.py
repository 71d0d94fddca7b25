"""What mtlrec manages on disk, and the one guard every writer of a user-named output calls.

mtlrec manages three kinds of directory, told apart by the files it puts in them:

    run dir           metrics.json, .hydra/config.yaml, checkpoints/{best,last}.pt or .mtlrec.lock
    prepared dataset  spec.json with checksums.json, encoders.json or train.parquet (`mtlrec
                      prepare`, or generated on first use)
    export dir        export.json (`mtlrec export`)

Every file at or below such a directory is an artifact: no command writes a user-named output
(predict --output, compare --output / --plot, export --output, and any command added later)
inside one, whatever flag is given. A writer calls, before any work:

    path = check_output(path, "--output", inputs=[input_path], overwrite=args.overwrite)
    path = check_output_dir(path, "--plot", inputs=run_dirs)

and writes through `writing(path)`, which turns a full disk, a read-only directory or a missing
permission into ONE line naming the file (the temp files it is given are removed first):

    with writing(output_path, temps=[tmp]):
        ...

Tests simulate what root cannot make (a full disk; a read-only dir when running as root) with
`inject_fault(path)`, called by each writer where it starts a file: MTLREC_FAULT_NO_SPACE=NAME
makes the write of a file called NAME fail with ENOSPC; MTLREC_FAULT_READ_ONLY=NAME makes the
creation of a file called NAME, or of any file in a directory called NAME, fail with EROFS.
Imports nothing heavy.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from mtlrec.errors import MtlrecError

RUN_DIR, DATASET, EXPORT = "run dir", "prepared dataset", "export dir"
# (kind, groups of marker files: a directory holding every file of one group is that kind)
MARKERS: tuple[tuple[str, tuple[tuple[str, ...], ...]], ...] = (
    (EXPORT, (("export.json",),)),  # first: an export holds a spec.json and encoders too
    (
        RUN_DIR,
        (
            ("metrics.json",),
            (".hydra/config.yaml",),
            (".mtlrec.lock",),
            ("checkpoints/best.pt",),
            ("checkpoints/last.pt",),
        ),
    ),
    (
        DATASET,
        (
            ("spec.json", "checksums.json"),
            ("spec.json", "encoders.json"),
            ("spec.json", "train.parquet"),
        ),
    ),
)
NO_SPACE_FAULT_ENV = "MTLREC_FAULT_NO_SPACE"
READ_ONLY_FAULT_ENV = "MTLREC_FAULT_READ_ONLY"
# The errors a writer cannot fix by itself, and what the user can do about each.
_REMEDIES = {
    errno.ENOSPC: "free some space on that disk and run again",
    errno.EDQUOT: "free some space (your disk quota is full) and run again",
    errno.EROFS: "write to another directory",
    errno.EACCES: "you may not write there; write to another directory",
    errno.EPERM: "you may not write there; write to another directory",
}


@dataclass(frozen=True)
class Managed:
    kind: str  # RUN_DIR | DATASET | EXPORT
    path: Path


def kind_of(directory: Path) -> str | None:
    """The kind of mtlrec-managed directory `directory` is, or None."""
    for kind, groups in MARKERS:
        if any(all(os.path.lexists(directory / m) for m in group) for group in groups):
            return kind
    return None


def managed_by(path: str | Path) -> Managed | None:
    """The nearest directory at or above `path` (resolved) that mtlrec manages, or None."""
    here = Path(path).expanduser().resolve()
    for directory in (here, *here.parents):
        if directory.is_dir():
            kind = kind_of(directory)
            if kind is not None:
                return Managed(kind, directory)
    return None


def _same(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return a.expanduser().resolve() == b.expanduser().resolve()


def _refuse_inputs(path: Path, flag: str, inputs: Mapping[str, str | Path], what: str) -> None:
    for label, given in inputs.items():
        if path.exists() and _same(path, Path(given).expanduser()):
            raise MtlrecError(
                f"{flag} {path} is the {label} file; write the {what} to another file"
            )


def _refuse_managed(path: Path, flag: str, what: str, at: Path | None = None) -> None:
    """One line if `at` (default: `path`) lies in a managed directory."""
    owner = managed_by(path if at is None else at)
    if owner is not None:
        raise MtlrecError(
            f"{flag} {path}: lies in the {owner.kind} {owner.path}, whose files mtlrec manages; "
            f"write the {what} elsewhere (no flag overrides this)"
        )


def check_output(
    path: str | Path,
    flag: str,
    inputs: Mapping[str, str | Path] | None = None,
    overwrite: bool = False,
    what: str = "output",
    example: str = "output",
) -> Path:
    """Refuse, in one line and before any work, an output file that is a directory, one of the
    command's `inputs` ({"--input": path}), inside a run dir / prepared dataset / export dir
    (whatever flag is given), or (without `overwrite`) an existing file. `what` names the
    output in the lines, `example` the file name suggested for a directory. Returns the path."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise MtlrecError(f"{flag} {path}: is a directory; name a file, e.g. {path / example}")
    _refuse_inputs(path, flag, inputs or {}, what)
    _refuse_managed(path, flag, what, at=path.parent)
    if path.is_symlink():  # where it points counts too
        _refuse_managed(path, flag, what, at=path.resolve().parent)
    if (path.exists() or path.is_symlink()) and not overwrite:
        raise MtlrecError(f"{flag} {path}: already exists; pass --overwrite to replace it")
    if not path.parent.is_dir():
        raise MtlrecError(f"{path.parent}: output directory does not exist")
    return path


def check_output_dir(
    path: str | Path,
    flag: str,
    inputs: Iterable[str | Path] = (),
    own: str | None = None,
    what: str = "files",
) -> Path:
    """Refuse an output directory that is a file, one of the `inputs`, or lies in a managed
    directory. `own`: the kind of managed directory the writer itself makes (EXPORT
    for `mtlrec export`): a directory of that kind may be written again (replaced whole)."""
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise MtlrecError(f"{flag} {path}: is a file; name a directory for the {what}")
    for given in inputs:
        source = Path(given).expanduser().resolve()
        if path.resolve() == source:
            raise MtlrecError(f"{flag} {path}: is the input {given}; write the {what} elsewhere")
    owner = managed_by(path)
    if owner is None or (own is not None and owner.kind == own and owner.path == path.resolve()):
        return path
    _refuse_managed(path, flag, what)
    return path


def inject_fault(path: str | Path, no_space: bool = True) -> None:
    """Tests only: fail like a full disk / a read-only dir when the env names this file (see the
    module docstring). Unset: no effect. (`no_space=False`: the caller simulates it itself.)"""
    path = Path(path)
    full = os.environ.get(NO_SPACE_FAULT_ENV, "").partition(":")[0]
    if no_space and full and full == path.name:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
    read_only = os.environ.get(READ_ONLY_FAULT_ENV, "")
    if read_only and read_only in (path.name, path.parent.name):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))


def write_error_code(exc: BaseException) -> int | None:
    """The errno of a write failure a user must fix (full disk, read-only, no permission),
    looking through wrapped causes and the messages of libraries that drop errno (pyarrow,
    torch.save), or None."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in _REMEDIES:
            return seen.errno
        text = str(seen)
        for code in _REMEDIES:
            if f"errno {code}]" in text.lower() or os.strerror(code) in text:
                return code
        seen = seen.__cause__ or seen.__context__
    return None


def write_error(path: str | Path, code: int) -> MtlrecError:
    return MtlrecError(f"{path}: cannot write it: {os.strerror(code)}; {_REMEDIES[code]}")


def _remove(paths: Iterable[Path]) -> None:
    for p in paths:
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                p.unlink()


@contextlib.contextmanager
def writing(path: str | Path, temps: Iterable[str | Path] = ()) -> Iterator[None]:
    """Turn a full disk / read-only / permission failure of the block into one MtlrecError line
    naming `path`; on any failure the `temps` (files or dirs) are removed first."""
    try:
        yield
    except BaseException as e:
        _remove([Path(t) for t in temps])
        if isinstance(e, MtlrecError):
            raise
        code = write_error_code(e) if isinstance(e, Exception) else None
        if code is None:
            raise
        raise write_error(path, code) from None


__all__ = [
    "DATASET",
    "EXPORT",
    "RUN_DIR",
    "Managed",
    "check_output",
    "check_output_dir",
    "inject_fault",
    "kind_of",
    "managed_by",
    "write_error",
    "write_error_code",
    "writing",
]
