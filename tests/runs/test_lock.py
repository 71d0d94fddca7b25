"""runs/lock.py: one owner per dir, across real processes; stale locks of dead processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from mtlrec.runs import lock
from mtlrec.runs.lock import DirInUse, claim, owner_pid
from mtlrec.runs.records import LOCK_FILE

HOLDER = textwrap.dedent(
    """
    import sys
    from mtlrec.runs.lock import claim
    claim(sys.argv[1])
    print("held", flush=True)
    sys.stdin.read()  # hold until the test closes our stdin (or kills us)
    """
)


def _holder(directory):
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(directory)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout.readline() == "held\n"
    return proc


def test_a_dir_held_by_a_live_process_is_refused_with_its_pid(tmp_path):
    proc = _holder(tmp_path / "run")
    try:
        assert owner_pid(tmp_path / "run") == proc.pid
        with pytest.raises(DirInUse) as info:
            claim(tmp_path / "run", "pick another dir")
        assert str(info.value) == (
            f"{tmp_path / 'run'}: in use by mtlrec process {proc.pid} "
            f"({tmp_path / 'run' / LOCK_FILE}); pick another dir"
        )
        assert info.value.pid == proc.pid
    finally:
        proc.stdin.close()
        assert proc.wait(timeout=30) == 0
    # A clean exit removes the lock file: the dir is free again, with nothing left behind.
    assert not (tmp_path / "run" / LOCK_FILE).exists()
    assert owner_pid(tmp_path / "run") is None
    held = claim(tmp_path / "run")
    assert (tmp_path / "run" / LOCK_FILE).read_text() == f"{os.getpid()}\n"
    held.release()
    assert os.listdir(tmp_path / "run") == []


def test_the_lock_of_a_killed_process_is_taken_over_with_a_warning(tmp_path, capfd):
    proc = _holder(tmp_path / "run")
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert (tmp_path / "run" / LOCK_FILE).read_text() == f"{proc.pid}\n"  # left behind
    assert owner_pid(tmp_path / "run") is None  # ...but nobody holds it
    held = claim(tmp_path / "run")
    try:
        assert capfd.readouterr().err == (
            f"warning: {tmp_path / 'run'}: took over the lock of mtlrec process {proc.pid}, "
            "which is no longer running (killed?); its files are left as they are\n"
        )
        assert (tmp_path / "run" / LOCK_FILE).read_text() == f"{os.getpid()}\n"
    finally:
        held.release()


def test_claims_in_one_process_nest_and_the_last_release_frees(tmp_path):
    outer = claim(tmp_path)
    inner = claim(tmp_path)
    assert inner is outer and outer.depth == 2
    inner.release()
    assert (tmp_path / LOCK_FILE).exists() and lock._HELD
    outer.release()
    assert not (tmp_path / LOCK_FILE).exists() and tmp_path not in lock._HELD


def test_many_processes_racing_for_one_dir_get_exactly_one_owner(tmp_path):
    code = textwrap.dedent(
        """
        import sys, time
        from mtlrec.runs.lock import claim, DirInUse
        time.sleep(max(0.0, float(sys.argv[2]) - time.time()))  # start together
        try:
            claim(sys.argv[1])
        except DirInUse:
            print("refused", flush=True)
            sys.exit(1)
        print("owner", flush=True)
        sys.stdin.read()
        """
    )
    import time

    start = str(time.time() + 3.0)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(tmp_path / "d"), start],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(6)
    ]
    answers = [p.stdout.readline().strip() for p in procs]
    for p in procs:
        p.stdin.close()
    codes = [p.wait(timeout=30) for p in procs]
    assert sorted(answers) == ["owner"] + ["refused"] * 5
    assert sorted(codes) == [0] + [1] * 5


def test_a_file_system_without_locks_runs_with_a_warning(tmp_path, monkeypatch, capfd):
    import errno

    def no_flock(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(lock.fcntl, "flock", no_flock)
    held = claim(tmp_path / "nfs")
    assert capfd.readouterr().err == (
        f"warning: {tmp_path / 'nfs'}: this file system cannot lock files (No locks available); "
        "nothing stops a second process from writing into this dir\n"
    )
    held.release()
    assert os.listdir(tmp_path / "nfs") == []  # no temp file left either
