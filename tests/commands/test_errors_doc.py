"""docs/errors.md and the program agree: every row of its "Exactly what you see" table is run
through the real `mtlrec` command and its stderr line compared with the doc, character for
character."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest

from conftest import TINY
from helpers.cli import lines, mtlrec

DOC = Path(__file__).resolve().parents[2] / "docs" / "errors.md"
SECTION = "## Exactly what you see, through the real command"
# Rows whose error is found inside the run (after Hydra started the job). A dataset whose spec is
# at hand (a prepared dir, the generated synthetic_ccp) is checked before: its task errors print
# `mtlrec train: error:` and write nothing.
IN_RUN = {"a task selection a funnel model cannot train (inside the run)"}


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
    # a wrong command line (argparse's, or an override naming no option or key) exits 2
    usage = "see `mtlrec" in line or re.search(
        r"error: (Could not (find|override)|cannot parse|config: Could not override|"
        r"unknown dataset '|say which dataset)",
        line,
    )
    assert code == (2 if usage else 1)


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


def _doc_line(case: str) -> str:
    """The first `...` line of the "Every case" row `case` (its what-you-see column)."""
    for row in DOC.read_text().splitlines():
        cells = [c.strip() for c in row.strip().strip("|").split(" | ")]
        if cells and cells[0] == case:
            return re.findall(r"`([^`]+)`", cells[2])[0]
    raise AssertionError(f"no row '{case}' in {DOC}")


def _as_pattern(doc: str, **placeholders: str) -> str:
    """A doc line as a regex: placeholders (DATA, DIR, RAW, RUN) and `...` stand for anything,
    12-hex digest prefixes for any such prefix, numbers of bytes for any number."""
    pattern = re.escape(doc)
    for name, value in placeholders.items():
        pattern = pattern.replace(name, re.escape(value))
    pattern = re.sub(r"[0-9a-f]{12}(?=\\\.\\\.\\\.)", "[0-9a-f]{12}", pattern)
    pattern = re.sub(r"(?<![\w.])\d{3,}(?= bytes)|(?<=recorded )\d{3,}", r"\\d+", pattern)
    return pattern.replace(re.escape("..."), ".*")


def test_the_dataset_integrity_lines_of_the_doc_are_the_programs(tmp_path, caplog):
    """The lines of the checksum rows, made here by the code that prints them (the cases run
    through the CLI in tests/data/test_checksums.py), match the doc."""
    from mtlrec.data.prepare.manifest import read_manifest, verify_files, write_manifest
    from mtlrec.errors import MtlrecError

    data = tmp_path / "ds"
    data.mkdir()
    (data / "val.parquet").write_bytes(b"x" * 26600)
    write_manifest(data)
    (data / "val.parquet").write_bytes(b"y" * 26600)
    with pytest.raises(MtlrecError) as e:
        verify_files(data, ["val.parquet"])
    doc = _doc_line("a damaged prepared file").replace("train.parquet", "val.parquet")
    assert re.fullmatch(_as_pattern(doc, DATA=str(data / "val.parquet")), str(e.value))
    (data / "val.parquet").write_bytes(b"y" * 26590)
    with pytest.raises(MtlrecError) as e:
        verify_files(data, ["val.parquet"])
    doc = _doc_line("a truncated prepared file")
    assert re.fullmatch(_as_pattern(doc, DATA=str(data / "val.parquet")), str(e.value))
    (data / "checksums.json").unlink()
    with caplog.at_level("WARNING"):
        assert read_manifest(data) is None
    doc = _doc_line("a dataset prepared before checksums")
    assert [r.getMessage() for r in caplog.records] == [doc.replace("DIR", str(data))]


def test_the_raw_input_lines_of_the_doc_are_the_programs():
    from helpers.datagen import REPO

    checks = (REPO / "tests" / "data" / "test_checksums.py").read_text()
    cell = _doc_line("a 10 MB cell in a CSV").split("RAW/train.csv: ", 1)[1]
    assert "line 6 is 10.0 MB long, more than one " in checks and cell.startswith(
        "line 6 is 10.0 MB"
    )
    assert (
        '"read block (dataset.block_size_mb=1); raise it, e.g. +dataset.block_size_mb=32"' in checks
    )
    page = _doc_line("damaged pages of a raw parquet input")
    assert page.endswith("; the file is damaged: write it again")
    assert "not a readable parquet file from row 1 on (" in page
    from .test_faults_cli import NO_SPACE

    assert _doc_line("disk full while Hydra writes `.hydra/*.yaml`") == (
        f"RUN/.hydra/config.yaml: {NO_SPACE}"
    )


def _log_dataset(tmp_path: Path, ts: str, user: str, sequence: dict) -> Path:
    """A config dir with a log in time order whose second event has the given time and user."""
    raw = tmp_path / "raw"
    raw.mkdir(exist_ok=True)
    (raw / "log.csv").write_text(f"user,item,ts,click\nu1,i1,5,0\n{user},i2,{ts},1\nu1,i2,7,1\n")
    conf = tmp_path / "conf" / "dataset"
    conf.mkdir(parents=True, exist_ok=True)
    frm = {"user": "user", "item": "item", "time": "ts", **sequence}
    (conf / "log.yaml").write_text(
        f"name: log\npreparer: csv\npath: {tmp_path / 'out'}\nraw_dir: {raw}\nfiles: log.csv\n"
        "sparse: [user, item]\ntargets: {ctr: {label: click}}\n"
        "split: {by: user_time, user: user, time: ts, test: 1, val: 1}\n"
        f"sequences: {{hist: {{from: {json.dumps(frm)}}}}}\n"
    )
    return raw


@pytest.mark.parametrize(
    ("case", "ts", "user", "sequence"),
    [
        ("a log in time order: a column the config names is not in the file", "6", "u2", {"user": "uid"}),
        ("a built history of no positive length", "6", "u2", {"max_len": 0}),
        ("a time that cannot be ordered", "soon", "u2", {}),
        ("an event without a user", "6", "", {}),
    ],
)  # fmt: skip
def test_the_time_order_lines_of_the_doc_are_the_programs(tmp_path, case, ts, user, sequence):
    """Logs in time order (mtlrec/data/prepare/timeline.py): each documented line is the one the
    real `mtlrec prepare` prints, and nothing is published."""
    raw = _log_dataset(tmp_path, ts, user, sequence)
    out = mtlrec("prepare", "--config-dir", "conf", "dataset=log", cwd=tmp_path)
    doc = _doc_line(case)
    if not doc.startswith("mtlrec prepare: error: "):
        doc = "mtlrec prepare: error: " + doc
    assert (out.returncode, lines(out.stderr)) == (1, [doc.replace("RAW", str(raw))])
    assert not (tmp_path / "out").exists()


def test_the_export_name_clash_line_of_the_doc_is_the_programs():
    from mtlrec.errors import MtlrecError
    from mtlrec.inference.export import check_output_names

    with pytest.raises(MtlrecError) as e:
        check_output_names(["ctr", "dense"], "RUN/checkpoints/best.pt")
    doc = _doc_line("export: a task named like an input")
    assert doc == f"mtlrec export: error: {e.value}"
    check_output_names(["ctr", "cvr", "score"], "RUN/checkpoints/best.pt")  # other names pass
