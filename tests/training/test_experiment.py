"""experiment.run as the status wrapper around the recipe (settings -> ... -> finish)."""

from __future__ import annotations

import json

import pytest

from conftest import TINY, compose_train
from mtlrec.errors import MtlrecError
from mtlrec.training import distributed


def test_a_failed_rank_from_spawn_is_recorded_by_run(tmp_path, monkeypatch):
    from mtlrec.experiment import run

    def spawn(target, cfg, run_dir):
        raise distributed.RankFailed(
            "rank 1 of 2 died: killed by SIGKILL", user_error=False, details="Traceback ..."
        )

    monkeypatch.setattr(distributed, "should_spawn", lambda cfg: True)
    monkeypatch.setattr(distributed, "spawn", spawn)
    with pytest.raises(distributed.RankFailed):
        run(compose_train([*TINY, "trainer.devices=2"]), tmp_path / "run")
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert (metrics["status"], metrics["error"]) == (
        "failed",
        "rank 1 of 2 died: killed by SIGKILL",
    )


def test_settings_are_checked_before_anything_is_written(tmp_path):
    from mtlrec.experiment import run

    with pytest.raises(MtlrecError) as info:
        run(compose_train([*TINY, "trainer.grad_clip_norm=abc"]), tmp_path / "run")
    assert str(info.value) == "trainer.grad_clip_norm='abc': expected a number or null"
    assert not (tmp_path / "run").exists()
