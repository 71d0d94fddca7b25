"""Atomic file writes: a temp file next to the target, fsync, then rename over the target.

A reader sees the old file or the new one, never half of one. The temp file is created with
mode 0o666 filtered by the user's umask (as `open(path, "w")` would), not mkstemp's 0o600, so a
run dir's files are as readable as any other file the user writes. Imports nothing heavy.
"""

from __future__ import annotations

import json
import os
import re
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

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
    """Call `write(binary file)` on a temp file, then rename it to `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _create_temp(path)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


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
    removed = []
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
