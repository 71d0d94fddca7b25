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


def stop_then_resume(
    monkeypatch, run, config, resumed_config, run_dir, k: int, before_resume=None
) -> BaseException:
    """Trains `config` into `run_dir` until a SIGTERM at step `k` (checked: exit 128+15), then
    `resumed_config` (the same plus `resume=run_dir`) to the end, with the real StopRequest.
    `before_resume()` runs in between (to look at what the stop left); returns the stop's
    TrainingInterrupted (its message names where training stopped)."""
    import pytest

    from mtlrec.training.signals import TrainingInterrupted

    monkeypatch.setattr(StopAfter, "k", k)
    monkeypatch.setattr("mtlrec.experiment.StopRequest", StopAfter)
    with pytest.raises(TrainingInterrupted) as info:
        run(config, run_dir)
    assert info.value.exit_code == 128 + signal.SIGTERM
    monkeypatch.setattr("mtlrec.experiment.StopRequest", StopRequest)
    if before_resume is not None:
        before_resume()
    run(resumed_config, run_dir)
    return info.value
