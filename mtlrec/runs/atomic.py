"""Atomic file writes: a temp file next to the target, fsync, then rename over the target.

A reader sees the old file or the new one, never half of one. The temp file is created with
mode 0o666 filtered by the user's umask (as `open(path, "w")` would), not mkstemp's 0o600, so a
run dir's files are as readable as any other file the user writes. Imports nothing heavy.
"""

from __future__ import annotations

import errno
import json
import os
import re
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from mtlrec.errors import MtlrecError
from mtlrec.outputs import NO_SPACE_FAULT_ENV, inject_fault, write_error, write_error_code
from mtlrec.runs.records import json_safe

TEMP_SUFFIX = ".tmp"
# .NAME.<pid>-<8 hex>.tmp, as temp_path names them.
TEMP_NAME = re.compile(r"^\..+\.(?P<pid>\d+)-[0-9a-f]{8}\.tmp$")


def temp_path(path: Path) -> Path:
    """`.NAME.<pid>-<random>.tmp` next to `path` (dot-named: listings and globs skip it)."""
    return path.parent / f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}{TEMP_SUFFIX}"


def _create_temp(path: Path) -> tuple[int, Path]:
    for _ in range(100):
        tmp = temp_path(path)
        try:
            # 0o666 & ~umask, like any file the user creates.
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"{path}: could not create a temporary file next to it")


def atomic_write(path: Path, write: Callable[[IO[bytes]], Any]) -> None:
    """Call `write(binary file)` on a temp file, then rename it to `path`.

    A full disk (ENOSPC, EDQUOT; torch.save wraps it in a RuntimeError) is one MtlrecError line
    naming the file; the temp file is removed and `path` keeps its previous version."""
    path = Path(path)
    try:
        inject_fault(path, no_space=False)  # tests: a read-only dir (see mtlrec.outputs)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = _create_temp(path)
    except OSError as e:
        _raise_if_no_space(e, path)
        raise
    # imported here: the run-dir modules import no training module at load (compare stays light)
    from mtlrec.training.signals import complete_writes

    try:
        with complete_writes(), os.fdopen(fd, "wb") as f:  # a second Ctrl-C waits for the rename
            write(_with_fault(f, path))
            f.flush()
            os.fsync(f.fileno())
            os.replace(tmp, path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        _raise_if_no_space(e, path)
        raise


NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
# Tests: `NAME[:BYTES]`: writes of the file NAME (e.g. last.pt) fail with ENOSPC past BYTES
# (default 1024), as on a full disk (a real one cannot be made without root). Unset: no effect.
# (The same variable as mtlrec.outputs', whose other writers fail at the file's first byte.)


class NoSpaceError(MtlrecError):
    """A write failed because the disk (or the quota) is full."""


# Tests: `NAME:MARKER`: the process's first write into a file NAME creates the file MARKER,
# holding the number of SIGINT/SIGTERM received so far (kept current), and waits there until
# MARKER is removed: a signal then arrives in the middle of the write, deterministically (and
# a second process meets the run while it trains). Unset: no effect.
PAUSE_FAULT_ENV = "MTLREC_FAULT_PAUSE_WRITE"
_paused: list[str] = []  # the names paused once already


def _with_fault(f: IO[bytes], path: Path) -> Any:
    name, _, marker = os.environ.get(PAUSE_FAULT_ENV, "").partition(":")
    if name == path.name and marker and name not in _paused:
        _paused.append(name)
        return _PausedFile(f, Path(marker))
    name, _, limit = os.environ.get(NO_SPACE_FAULT_ENV, "").partition(":")
    return _FaultyFile(f, int(limit or 1024)) if name == path.name else f


class _PausedFile:
    def __init__(self, f: IO[bytes], marker: Path) -> None:
        self._f, self._marker, self._paused = f, marker, False

    def write(self, data: bytes) -> int:
        from mtlrec.training.signals import received  # tests only: the signals seen so far

        if not self._paused:
            self._paused = True
            shown = -1
            self._marker.write_text("0")
            while self._marker.exists():
                if len(received) != shown:
                    shown = len(received)
                    self._marker.write_text(str(shown))
                time.sleep(0.005)
        return self._f.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._f, name)


class _FaultyFile:
    def __init__(self, f: IO[bytes], limit: int) -> None:
        self._f, self._written, self._limit = f, 0, limit

    def write(self, data: bytes) -> int:
        self._written += len(data)
        if self._written > self._limit:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return self._f.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._f, name)


def _raise_if_no_space(exc: BaseException, path: Path) -> None:
    """A full disk, a read-only dir or a missing permission as one line (else nothing)."""
    code = write_error_code(exc) if isinstance(exc, Exception) else None
    if code in NO_SPACE:
        raise NoSpaceError(
            f"{path}: cannot write it: {os.strerror(code)}; free some space on that "
            "disk (its previous version, if any, is kept) and run again"
        ) from None
    if code is not None:
        raise write_error(path, code) from None


def atomic_hard_link(source: Path, path: Path) -> bool:
    """`path` becomes a second name of the file `source`: a hard link under a temporary name,
    renamed over `path` atomically. False (nothing changed) where the file system has none."""
    tmp = temp_path(path)
    try:
        os.link(source, tmp)
    except OSError:
        return False
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return True


def save_png(fig: Any, path: Path, **savefig_args: Any) -> None:
    """A matplotlib figure written atomically as PNG (a full disk leaves no half image)."""
    atomic_write(Path(path), lambda f: fig.savefig(f, format="png", **savefig_args))


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(Path(path), lambda f: f.write(text.encode()))


def atomic_write_json(path: Path, obj: Any) -> None:
    """JSON with NaN/inf stored as null, indented, one trailing newline."""
    atomic_write_text(path, json.dumps(json_safe(obj), indent=2, sort_keys=False) + "\n")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def remove_stale_temps(directory: Path) -> list[Path]:
    """Delete the temp files that killed processes left in `directory` (a killed checkpoint
    write leaves a `.last.pt.<pid>-<hex>.tmp` as big as a checkpoint); returns them."""
    removed: list[Path] = []
    try:
        entries = list(Path(directory).iterdir())
    except OSError:
        return removed
    for entry in entries:
        match = TEMP_NAME.match(entry.name)
        if match and int(match["pid"]) != os.getpid() and not _alive(int(match["pid"])):
            try:
                entry.unlink()
            except OSError:
                continue
            removed.append(entry)
    return removed
