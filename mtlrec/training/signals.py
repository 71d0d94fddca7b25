"""Graceful stop on SIGINT / SIGTERM: the first signal asks the training loop to stop, the second
one stops at once.

The handler only sets a flag (a plain Python attribute: reading it in the loop costs no device
sync). The trainer reads it after every optimizer step, writes `checkpoints/last.pt` and raises
`TrainingInterrupted`. A second signal raises `KeyboardInterrupt` right away, except inside
`complete_writes()` (a checkpoint being written, last.pt moved to last.prev.pt and replaced): there
it waits for the end of the block, so the stop never leaves a half-done write behind.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any

from mtlrec.errors import MtlrecError

SIGNALS = (signal.SIGINT, signal.SIGTERM)

# A signal's disposition, as signal.signal returns and accepts it (typeshed's signal._HANDLER).
Handler = Callable[[int, FrameType | None], Any] | int | signal.Handlers | None

# Every signal the handlers below saw, in order: `mtlrec` reads the last one to exit with
# 128 + its number (a second SIGTERM stops at once and must still exit 143, not 130).
received: list[int] = []


def last_received() -> int | None:
    return received[-1] if received else None


# Open complete_writes() blocks of the main thread, and the stops that wait for their end.
_writing = 0
_waiting: list[Callable[[], None]] = []


@contextlib.contextmanager
def complete_writes() -> Iterator[None]:
    """A block that a second signal does not cut short: the stop it asks for happens when the
    block ends (main thread; elsewhere a no-op). An error leaving the block is not replaced."""
    global _writing
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _writing += 1
    try:
        yield
    finally:
        _writing -= 1
    if _writing == 0 and _waiting:
        stop_now = _waiting[-1]
        _waiting.clear()
        stop_now()


class TrainingInterrupted(MtlrecError):
    """Training stopped on request after writing a resumable checkpoint."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum  # the shell's convention: 130 for SIGINT, 143 for SIGTERM


@contextlib.contextmanager
def shielded() -> Iterator[None]:
    """Ignore SIGINT/SIGTERM while the final status of a stopped run is written (milliseconds),
    so that one more Ctrl-C then cannot end the process with a traceback."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, signal.SIG_IGN) for s in SIGNALS}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


class StopRequest:
    """Context manager installing the two-stage handlers (main thread only; elsewhere a no-op).

    On exit (and on the second signal) each signal gets back exactly the disposition it had on
    entry, whatever that was: Python's default_int_handler, SIG_DFL, SIG_IGN (SIGINT is ignored
    in background jobs of a non-interactive shell) or the handler `mtlrec` installs at start.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Handler] = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum is not None else ""

    def request(self, signum: int = signal.SIGINT) -> None:
        """Ask for a stop as the first signal would (also used by tests)."""
        self.signum = signum

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        received.append(signum)
        if self.signum is not None:
            if _writing:  # a checkpoint is being written: it completes first
                _waiting.append(self._stop_now)
                return
            self._stop_now()
        self.signum = signum

    def _stop_now(self) -> None:
        # Second signal: give up now. Restore what was there before, so a third one is handled
        # as it would have been without us (by default: the process ends).
        self.restore()
        raise KeyboardInterrupt

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for s in SIGNALS:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def restore(self) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous.clear()

    def __exit__(self, *exc: object) -> None:
        self.restore()
