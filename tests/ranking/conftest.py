"""The run the fusion tests share (tests/helpers/fusion.py makes it)."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers.fusion import prepare_and_train


@pytest.fixture(scope="session")
def two_task_run(tmp_path_factory) -> Path:
    """A shared-bottom run on the two-task data whose best fusion is known by construction."""
    return prepare_and_train(tmp_path_factory.mktemp("fusion"))
