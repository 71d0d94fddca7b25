"""A stop request that fires at a chosen training step: the in-process stand-in for a SIGTERM
in the resume tests (`monkeypatch.setattr(StopAfter, "k", K)` and
`monkeypatch.setattr("mtlrec.experiment.StopRequest", StopAfter)`)."""

from __future__ import annotations

import signal

from mtlrec.training.signals import StopRequest


class StopAfter(StopRequest):
    """Acts as if SIGTERM arrived during training step `k` (counted over the whole run)."""

    k = 0

    def __init__(self):
        super().__init__()
        self.polls = 0

    @property
    def requested(self) -> bool:  # read once per training step
        self.polls += 1
        if self.polls >= self.k:
            self.signum = signal.SIGTERM
        return self.signum is not None
