"""Publishing a prepared dataset: staged in a temporary sibling dir, renamed into place atomically.

    with staged_dir(path, overwrite) as tmp:   # write everything into tmp
        ...
    # now `path` holds exactly what was written, or nothing changed

- Never replaced without `overwrite=true`, and with it only when the existing directory is a
  prepared dataset mtlrec made (replace.py: not the raw input, not a parent of the current dir,
  nothing else in it). The old dataset is moved aside and removed only once the new one is in
  place; if publishing fails it is moved back.
- Never replaced by a race either: the final rename refuses
  an existing target (renameat2 RENAME_NOREPLACE, or rename(2) onto a non-empty dir, which fails
  the same way), so the loser gets one line and its staging dir is removed.
- A dataset that a running job reads (`hold_dataset`, taken by the streaming reader for its life)
  is never replaced under it: `overwrite=true` refuses while the shared lock is held.
- Every file of the published dir is listed with its size and SHA-256 in checksums.json
  (mtlrec.data.prepare.manifest), written last into the staging dir and verified on load.
- Staging dirs `.NAME.tmp-PID-*` of processes that died are removed by the next prepare of the
  same path; an old dataset `.NAME.old-PID-*` a dead process moved aside is moved back when
  nothing was published in its place (else removed).
- A full disk or a read-only data dir is one line (mtlrec.outputs.writing); the staging dir goes.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import logging
import os
import shutil
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from mtlrec.data.prepare.manifest import write_manifest
from mtlrec.data.prepare.replace import check_replaceable
from mtlrec.data.spec import SPEC_FILE, DatasetSpec
from mtlrec.errors import MtlrecError
from mtlrec.outputs import inject_fault, writing

log = logging.getLogger(__name__)

_RENAME_NOREPLACE = 1
_AT_FDCWD = -100


def _rename_noreplace(src: Path, dst: Path) -> None:
    """rename(src, dst) that fails with FileExistsError when dst exists (atomic check)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        renameat2 = None
    if renameat2 is not None:
        rc = renameat2(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), _RENAME_NOREPLACE)
        if rc == 0:
            return
        err = ctypes.get_errno()
        if err == errno.EEXIST:
            raise FileExistsError(err, os.strerror(err), str(dst))
        if err not in (errno.ENOSYS, errno.EINVAL):
            raise OSError(err, os.strerror(err), str(dst))
    # Without renameat2: rename(2) onto a non-empty directory fails; our targets never are empty.
    if dst.exists():
        raise FileExistsError(errno.EEXIST, "exists", str(dst))
    try:
        os.rename(src, dst)
    except OSError as e:
        if e.errno in (errno.ENOTEMPTY, errno.EEXIST):
            raise FileExistsError(e.errno, e.strerror, str(dst)) from None
        raise


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale(path: Path) -> list[Path]:
    """Remove `.NAME.tmp-PID-*` / `.NAME.old-PID-*` siblings of `path` whose process is gone."""
    removed: list[Path] = []
    if not path.parent.is_dir():
        return removed
    for kind in ("tmp", "old"):
        for stale in path.parent.glob(f".{path.name}.{kind}-*"):
            pid = stale.name[len(f".{path.name}.{kind}-") :].split("-", 1)[0]
            if pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
                if kind == "old" and (stale / SPEC_FILE).is_file() and not os.path.lexists(path):
                    os.rename(stale, path)  # died before publishing: the old dataset is back
                    log.warning(
                        "%s: moved back the dataset a stopped prepare had moved aside", path
                    )
                    continue
                shutil.rmtree(stale, ignore_errors=True)
                removed.append(stale)
    if removed:
        log.info("removed %d staging dir(s) of dead processes next to %s", len(removed), path)
    return removed


class DatasetHold:
    """An open, shared-locked fd of a dataset dir; closed when the last reference goes away
    (objects that copy their reader's attributes share it safely)."""

    def __init__(self, fd: int):
        self.fd: int | None = fd

    def release(self) -> None:
        fd, self.fd = self.fd, None
        if fd is not None:
            os.close(fd)

    def __del__(self) -> None:
        self.release()


def hold_dataset(path: Path) -> DatasetHold | None:
    """A shared lock on a prepared dataset dir for as long as the returned hold is referenced.

    Readers that come back to the files later (the streaming reader reopens its split every
    epoch) hold it, so that `mtlrec prepare ... overwrite=true` refuses instead of swapping
    the files under them. None where the dir cannot be opened (the read then fails on its own).
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
    except OSError:
        os.close(fd)
        return None
    return DatasetHold(fd)


@contextlib.contextmanager
def _exclusive(path: Path) -> Iterator[None]:
    """Hold `path` exclusively while it is replaced; one line if a reader holds it."""
    if not path.is_dir():
        yield
        return
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise MtlrecError(
                f"{path}: a running job is reading this dataset; prepare again when it has finished, or write to another dataset.path"
            ) from None
        yield
    finally:
        os.close(fd)


def _exists_error(path: Path, raced: bool) -> MtlrecError:
    how = (
        "another prepare published a dataset there first"
        if raced
        else "a prepared dataset already exists there"
    )
    return MtlrecError(f"{path}: {how}; pass overwrite=true to prepare it again")


def _make_parent(path: Path, what: str = "data dir") -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise MtlrecError(
            f"{path.parent}: cannot create the {what} ({e.strerror}); set MTLREC_DATA_DIR or data_dir"
        ) from None


def _swap(tmp: Path, path: Path, overwrite: bool, tag: str) -> None:
    if not overwrite or not path.exists():
        try:
            _rename_noreplace(tmp, path)
        except FileExistsError:
            raise _exists_error(path, raced=True) from None
        return
    old = path.parent / f".{path.name}.old-{tag}"
    with _exclusive(path):
        os.rename(path, old)
        try:
            _rename_noreplace(tmp, path)
        except BaseException as e:
            if not os.path.lexists(path):  # nothing published: the old dataset goes back
                os.rename(old, path)
            if isinstance(e, FileExistsError):  # a prepare without overwrite published first
                raise _exists_error(path, raced=True) from None
            raise
    shutil.rmtree(old, ignore_errors=True)  # only now that the new dataset is in place


@contextlib.contextmanager
def staged_dir(
    path: Path, overwrite: bool, origin: str = "prepared", inputs: Iterable[str | Path] = ()
) -> Iterator[Path]:
    """A temporary sibling of `path` that becomes `path` only when the block completes, with
    the checksums of all its files in checksums.json (`origin`: prepared or generated).
    `inputs`: the raw files and dirs read, which overwrite=true must never replace."""
    path = Path(path).expanduser()
    clean_stale(path)  # first: an old dataset a stopped prepare moved aside is back in place
    if os.path.lexists(path) and not overwrite:
        raise _exists_error(path, raced=False)
    if os.path.lexists(path):
        check_replaceable(path, inputs)
    _make_parent(path)
    tag = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp = path.parent / f".{path.name}.tmp-{tag}"
    with writing(path, temps=[tmp]):
        inject_fault(tmp)
        tmp.mkdir()
    try:
        with writing(path, temps=[tmp]):
            yield tmp
            write_manifest(tmp, origin)
            _swap(tmp, path, overwrite, tag)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def generate_once(path: Path, write: Callable[[Path], object], what: str) -> Path:
    """`path`, written by `write(staging_dir)` first when it holds no dataset yet.

    For datasets made on first use: parallel jobs may race to make the same one; the first
    rename wins and the others reuse its (identical) result.
    """
    path = Path(path).expanduser()
    if (path / SPEC_FILE).is_file():
        DatasetSpec.load(path)  # reused: its spec and small files checked (the splits on read)
        return path
    if path.exists():
        raise MtlrecError(
            f"{path}: exists but holds no {SPEC_FILE} (an incomplete dataset?); remove it and rerun"
        )
    _make_parent(path, "data cache dir")
    log.info("Generating %s into %s", what, path)
    try:
        with staged_dir(path, overwrite=False, origin="generated") as tmp:
            write(tmp)
    except MtlrecError:
        if (path / SPEC_FILE).is_file():  # a parallel job generated it first
            return path
        raise
    return path
