"""docs/errors.md and the program agree: every row of its "Exactly what you see" table is run
through the real `mtlrec` command and its stderr line compared with the doc, character for
character."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from conftest import TINY
from helpers.cli import lines, mtlrec

DOC = Path(__file__).resolve().parents[2] / "docs" / "errors.md"
SECTION = "## Exactly what you see, through the real command"
# Rows whose error is found inside the run (after Hydra started the job).
IN_RUN = {"a task the data does not have (inside the run)"}


def doc_rows() -> dict[str, tuple[str, str]]:
    """case -> (command, line) of the section's table."""
    text = DOC.read_text()
    body = text.split(SECTION, 1)[1].split("\n## ", 1)[0]
    rows = {}
    for row in body.splitlines():
        m = re.fullmatch(r"\| (.+?) \| `(mtlrec .+?)` \| `(.+)` \|", row.strip())
        if m:
            rows[m.group(1)] = (m.group(2), m.group(3))
    return rows


ROWS = doc_rows()


def test_the_doc_table_is_there():
    assert len(ROWS) >= 12 and set(ROWS) >= IN_RUN


def run_row(case: str, tmp_path: Path) -> tuple[int, list[str], str]:
    command, line = ROWS[case]
    args = shlex.split(command.replace("TMP", str(tmp_path)))[1:]
    if args[0] == "train":  # the tiny dataset, and nothing written into the cwd
        given = {a.split("=", 1)[0] for a in args}
        tiny = [o for o in TINY if o.split("=", 1)[0] not in given]
        args = [*args, *tiny, f"hydra.run.dir={tmp_path / 'run'}"]
    out = mtlrec(*args, cwd=tmp_path)
    return out.returncode, lines(out.stderr), line.replace("TMP", str(tmp_path))


@pytest.mark.parametrize("case", sorted(set(ROWS) - IN_RUN))
def test_each_documented_line_is_what_the_command_prints(case, tmp_path):
    code, err, line = run_row(case, tmp_path)
    assert err == [line]
    assert code == (2 if "see `mtlrec" in line else 1)


@pytest.mark.parametrize("case", sorted(IN_RUN))
def test_an_error_inside_a_run_is_its_line_somewhere_on_stderr(case, tmp_path):
    code, err, line = run_row(case, tmp_path)
    assert code == 1 and line in err
    assert not any("Traceback" in ln for ln in err)


@pytest.mark.parametrize("case", sorted(IN_RUN))
def test_an_error_inside_a_run_is_printed_once_without_hydras_frame(case, tmp_path):
    code, err, line = run_row(case, tmp_path)
    assert (code, err) == (1, [line])


def test_the_fault_lines_of_the_doc_are_the_programs():
    """The faults that need a fault hook or a prepared run dir (tests/commands/test_faults_cli.py
    and test_resume_cli.py assert these lines through the CLI) are documented with the same text."""
    from .test_faults_cli import NO_SPACE

    text = DOC.read_text()
    assert f"`RUN/checkpoints/last.pt: {NO_SPACE}`" in text
    assert f"`RUN/metrics.json: {NO_SPACE}`" in text
    assert (
        "`mtlrec train: error: RUN/checkpoints/last.pt: is a directory, not a checkpoint file; "
        "move it away and resume again`"
    ) in text
    assert (
        "`RUN: starting the run again (the one there, status running, stopped before its first "
        "checkpoint)`"
    ) in text
