"""Exclusive ownership of a run dir or a sweep dir, for the life of the process that owns it.

The owner holds `<dir>/.mtlrec.lock`: a file holding its pid, created atomically (written and
flock'ed under a temp name, then hard-linked to the lock name, which fails if it exists: the
O_EXCL create without the moment where the file exists but nobody holds it yet) and kept
`fcntl.flock`ed until the process ends. So:

* a second process that claims the dir finds the lock held and stops with one line naming the
  owner's pid (`DirInUse`), before it writes anything;
* a lock file left by a process that was killed (SIGKILL, power loss) is not held by anyone: the
  kernel released its flock when the process died. The next claimer takes it over and says so
  in a warning line naming the dead pid;
* on a normal exit the owner removes the file (atexit). A claimer that opened the file just
  before the owner removed it checks, once it holds the flock, that the name still points to
  the file it locked, and starts over if not.

The lock file alone can be defeated: delete it while the owner runs and the next claimer
creates and locks a new one. So the owner also holds a flock on the directory itself (an open
descriptor of the dir, which no `rm` of a file inside can take away); a claimer that cannot take
it stops with `DirInUse` too, naming the pid the lock file held, if any.

flock is per open file: a second claim of the same dir in the same process (a sweep job in the
sweep's process) returns the lock already held instead of locking itself out.
"""

from __future__ import annotations

import atexit
import errno
import fcntl
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from mtlrec.errors import MtlrecError
from mtlrec.runs.records import LOCK_FILE


class DirInUse(MtlrecError):
    """Another live process holds the dir's lock."""

    def __init__(self, directory: Path, pid: int | None, hint: str):
        self.directory, self.pid = directory, pid
        who = f"mtlrec process {pid}" if pid else "another mtlrec process"
        super().__init__(f"{directory}: in use by {who} ({directory / LOCK_FILE}); {hint}")


@dataclass
class DirLock:
    directory: Path
    fd: int
    owner: int  # pid that took it (a forked child must not remove its parent's lock)
    depth: int = 1  # claims of this dir by this process not released yet
    dir_fd: int = -1  # the flock'ed descriptor of the directory itself

    @property
    def path(self) -> Path:
        return self.directory / LOCK_FILE

    def release(self) -> None:
        """Drop one claim; the last one removes the lock file and unlocks."""
        self.depth -= 1
        if self.depth > 0 or os.getpid() != self.owner:
            return
        _HELD.pop(self.directory, None)
        try:
            if self.fd >= 0 and _same_file(self.fd, self.path):
                self.path.unlink()  # while still locked: nobody can take a half-removed lock
        finally:
            for fd in (self.fd, self.dir_fd):
                if fd >= 0:
                    os.close(fd)


_HELD: dict[Path, DirLock] = {}


def _same_file(fd: int, path: Path) -> bool:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino)


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 64, 0).decode(errors="replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _write_pid(fd: int) -> None:
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    os.fsync(fd)


def _lock_or_none(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError as e:
        if e.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
            return False
        raise


def _create_locked(path: Path) -> int | None:
    """A new lock file at `path`, already flock'ed and holding our pid; None if one exists."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        _write_pid(fd)
        try:
            os.link(tmp, path)
        except FileExistsError:
            os.close(fd)
            return None
        except OSError:  # a file system without hard links: plain O_EXCL create
            os.close(fd)
            return _create_exclusive(path)
        return fd
    finally:
        tmp.unlink(missing_ok=True)


def _create_exclusive(path: Path) -> int | None:
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return None
    fcntl.flock(fd, fcntl.LOCK_EX)
    _write_pid(fd)
    return fd


def _take_existing(path: Path, directory: Path, hint: str) -> int | None:
    """Lock an existing lock file; DirInUse if its owner lives; None to start over."""
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return None  # its owner just removed it
    if not _lock_or_none(fd):
        pid = _read_pid(fd)
        os.close(fd)
        raise DirInUse(directory, pid, hint)
    if not _same_file(fd, path):  # removed (and maybe re-created) while we waited
        os.close(fd)
        return None
    dead = _read_pid(fd)
    print(
        f"warning: {directory}: took over the lock of mtlrec process {dead or '?'}, "
        "which is no longer running (killed?); its files are left as they are",
        file=sys.stderr,
        flush=True,
    )
    _write_pid(fd)
    return fd


def claim(directory: str | Path, hint: str = "wait for it to end or pick another dir") -> DirLock:
    """Own `directory` (created if missing) until release() or the end of the process."""
    directory = Path(directory).absolute()
    held = _HELD.get(directory)
    if held is not None and held.owner == os.getpid():
        held.depth += 1
        return held
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / LOCK_FILE
    dir_fd = -1
    try:
        dir_fd = _lock_dir(directory, hint)
        fd = _claim_fd(path, directory, hint)
    except OSError as e:
        if dir_fd >= 0:
            os.close(dir_fd)
        if e.errno not in NO_LOCKS:
            raise
        # Some network file systems have no flock: run, but say the dir is not protected.
        print(
            f"warning: {directory}: this file system cannot lock files ({e.strerror}); "
            "nothing stops a second process from writing into this dir",
            file=sys.stderr,
            flush=True,
        )
        fd = dir_fd = -1
    except BaseException:
        if dir_fd >= 0:
            os.close(dir_fd)
        raise
    lock = DirLock(directory, fd, os.getpid(), dir_fd=dir_fd)
    _HELD[directory] = lock
    return lock


NO_LOCKS = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS)


def _lock_dir(directory: Path, hint: str) -> int:
    """A flock'ed descriptor of `directory` itself; DirInUse when another process holds it."""
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        if not _lock_or_none(fd):
            raise DirInUse(directory, _pid_in(directory / LOCK_FILE), hint)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _pid_in(path: Path) -> int | None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None  # the lock file was deleted: the dir's flock still says who owns it
    try:
        return _read_pid(fd)
    finally:
        os.close(fd)


def _claim_fd(path: Path, directory: Path, hint: str) -> int:
    for _ in range(50):
        fd = _create_locked(path)
        if fd is None:
            fd = _take_existing(path, directory, hint)
        if fd is not None:
            return fd
    raise MtlrecError(f"{path}: could not take the lock (it keeps changing); try again")


def owner_pid(directory: str | Path) -> int | None:
    """The pid of the live process holding `directory`, or None when nobody does (0: someone
    does, but its lock file was deleted)."""
    try:
        dir_fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return None
    try:
        if not _lock_or_none(dir_fd):
            return _pid_in(Path(directory) / LOCK_FILE) or 0
    finally:
        os.close(dir_fd)  # (drops only the flock taken through this descriptor)
    path = Path(directory) / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        if _lock_or_none(fd):
            return None
        return _read_pid(fd)
    finally:
        os.close(fd)  # closing our own descriptor drops a flock we took; the owner keeps its own


@atexit.register
def _release_all() -> None:
    for lock in list(_HELD.values()):
        lock.depth = 1
        lock.release()
