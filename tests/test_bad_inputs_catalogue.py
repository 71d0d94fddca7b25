"""The catalogue of bad inputs and faults (scripts/bad_inputs.py, ~90 cases through the real
`mtlrec` command): no traceback, no silent loss, every error one clear line."""

from __future__ import annotations

import sys

import pytest

from helpers.datagen import REPO

pytestmark = pytest.mark.slow  # ~90 real `mtlrec` processes: several minutes

sys.path.insert(0, str(REPO / "scripts"))

import bad_inputs  # noqa: E402
from bad_input_catalogue import CASES  # noqa: E402


def test_the_catalogue_is_broad():
    assert len(CASES) >= 80
    assert len({c.name for c in CASES}) == len(CASES)


def test_the_catalogue_holds_the_binding_size_hostile_file_and_one_class_cases():
    from bad_input_runs_catalogue import BINDING, HOSTILE, ONE_CLASS, SIZES

    names = {c.name for c in CASES}
    for group in (BINDING, SIZES, HOSTILE, ONE_CLASS):
        assert group and {c.name for c in group} <= names
    assert sum(c.expect == "error" and bool(c.protect) for c in BINDING) >= 8


def test_no_traceback_and_no_silent_loss_over_the_catalogue(tmp_path):
    outcomes = bad_inputs.run_catalogue(jobs=2, keep=tmp_path / "work")
    table = bad_inputs.table(outcomes)
    print(table)
    bad = [f"[{o.kind}] {o.case.name}: {o.why}" for o in outcomes if o.kind in bad_inputs.KINDS[2:]]
    assert bad == [], table
    counts = {k: sum(o.kind == k for o in outcomes) for k in bad_inputs.KINDS}
    assert counts["traceback"] == 0 and counts["silent loss"] == 0 and counts["unclear"] == 0
    assert counts["clean one-liner"] + counts["accepted as documented"] == len(CASES)
