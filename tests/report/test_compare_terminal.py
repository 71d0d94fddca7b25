"""`mtlrec compare` on a terminal: readable at 80 columns, nothing truncated, the right std,
the same numbers as --format csv, colours on a terminal only, sort direction from the registry."""

from __future__ import annotations

import csv
import io
import os
import pty
import re
import subprocess
import sys

import pytest

from helpers.runs import base_config, write_run
from mtlrec.commands.compare import main
from mtlrec.report import table as table_module
from mtlrec.report.compare import build_table, load_runs, render, sort_rows

ANSI = re.compile(r"\x1b\[[0-9;]*m")
# (num_experts, seed) -> test/mean_auc: num_experts=2 has mean 0.4932 and sample std 0.0804.
AUC = {(2, 1): 0.4128, (2, 2): 0.4932, (2, 3): 0.5736, (4, 1): 0.75, (4, 2): 0.8, (4, 3): 0.7}


@pytest.fixture
def sweep(tmp_path):
    root = tmp_path / "multirun" / "12-00-00"
    for job, ((experts, seed), auc) in enumerate(AUC.items()):
        cfg = base_config(model__num_experts=experts, seed=seed)
        metrics = {
            "test/mean_auc": auc,
            "test/ctr_auc": auc - 0.05,
            "test/cvr_auc": auc + 0.0123456,
            "test/cvr_auc_entire": auc + 0.02,
            "test/ctr_logloss": 0.3 + seed / 100,
        }
        overrides = [f"model.num_experts={experts}", f"seed={seed}"]
        write_run(root / str(job), cfg, metrics, overrides=overrides)
    write_run(
        root / "6",
        base_config(model__num_experts=8, seed=1),
        status="failed",
        error="trainer.lr=-1: expected a positive number",
        overrides=["model.num_experts=8", "seed=1"],
    )
    return root


def compare(*args: str, columns: int | None = 80) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "NO_COLOR")}
    if columns:
        env["COLUMNS"] = str(columns)
    return subprocess.run(
        [sys.executable, "-m", "mtlrec", "compare", *args],
        capture_output=True,
        text=True,
        env=env,
        stdin=subprocess.DEVNULL,
        timeout=120,
        check=True,
    )


def _csv_rows(sweep, *args: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(compare(str(sweep), "--format", "csv", *args).stdout)))


@pytest.mark.parametrize("columns", [100, 80])
def test_seed_groups_show_the_right_std_in_full(sweep, columns):
    """At 100 columns this was `0.4932 ± 0.0`: rich shrank the column and cut the std."""
    out = compare(str(sweep), "--group-by-seed", columns=columns).stdout
    assert "0.4932 ± 0.0804" in out
    assert max(len(line) for line in out.splitlines()) <= columns
    rows = _csv_rows(sweep, "--group-by-seed")
    assert float(rows[0]["test/mean_auc_std"]) == pytest.approx(0.0804, abs=1e-12)
    for row in rows:
        for column, value in row.items():
            if column.endswith("_mean") and value:
                std = float(row[column[: -len("_mean")] + "_std"])
                assert f"{float(value):.4f} ± {std:.4f}" in out, column


def test_every_metric_value_appears_in_full_at_80_columns(sweep):
    result = compare(str(sweep), "--no-group")
    out = result.stdout
    assert max(len(line) for line in out.splitlines()) <= 80
    assert not ANSI.search(out)  # a pipe: no colours
    rows = _csv_rows(sweep, "--no-group")
    assert len(rows) == 7
    metric_columns = [c for c in rows[0] if c.startswith("test/")]
    assert len(metric_columns) == 4  # the auc family of the monitor val/mean_auc
    values = [f"{float(r[c]):.4f}" for r in rows for c in metric_columns if r[c]]
    assert len(values) == 6 * 4
    cells = re.findall(r"\d+\.\d{4}", out)
    assert sorted(values) == sorted(c for c in cells if c in values)  # each one, in full
    assert "0.5859" in out and "0.4251" in out  # cvr_auc of (2, 3) and (2, 1), 4 decimals
    for column in metric_columns + ["status", "seed", "num_experts", "wall_s"]:
        assert column in out
    assert "failed" in out and "trainer.lr=-1: expected a positive number" in out


def _wide_cells(text: str) -> tuple[list[str], list[list[str]]]:
    lines = text.splitlines()
    header = [c.strip() for c in next(ln for ln in lines if ln.startswith("┃")).split("┃")[1:-1]]
    rows = [[c.strip() for c in ln.split("│")[1:-1]] for ln in lines if ln.startswith("│")]
    return header, rows


@pytest.mark.parametrize("group", ["--no-group", "--group-by-seed"])
def test_the_table_holds_the_numbers_of_the_csv(sweep, group):
    header, cells = _wide_cells(compare(str(sweep), group, "--layout", "wide", columns=None).stdout)
    rows = _csv_rows(sweep, group)
    assert len(cells) == len(rows)
    for row, shown in zip(rows, cells, strict=True):
        shown_by_column = dict(zip(header, shown, strict=True))
        for column in [c for c in header if c.startswith("test/")]:
            if group == "--no-group":
                expected = f"{float(row[column]):.4f}" if row[column] else ""
            else:
                mean, std = row[f"{column}_mean"], row[f"{column}_std"]
                expected = f"{float(mean):.4f} ± {float(std):.4f}" if mean else ""
            assert shown_by_column[column] == expected, column


def test_layout_wide_keeps_every_column_whole_even_when_too_wide(sweep):
    out = compare(str(sweep), "--no-group", "--layout", "wide", columns=80).stdout
    header, cells = _wide_cells(out)
    assert max(len(line) for line in out.splitlines()) > 80  # the terminal wraps; we never cut
    assert header[:3] == ["run", "num_experts", "seed"]
    assert "test/cvr_auc_entire" in header and cells[0][header.index("test/mean_auc")] == "0.4128"


def test_layout_long_is_one_column_per_run(sweep):
    out = compare(str(sweep), "--group-by-seed", "--layout", "long", columns=200).stdout
    header, cells = _wide_cells(out)
    assert header == ["", "group 1", "group 2", "group 3"]
    by_field = {row[0]: row[1:] for row in cells}
    assert by_field["num_experts"] == ["2", "4", "8"]
    assert by_field["test/mean_auc"] == ["0.4932 ± 0.0804", "0.7500 ± 0.0500", ""]
    assert by_field["n"] == ["3", "3", "0"]


def test_colours_on_a_terminal_only(sweep):
    table = build_table(load_runs([sweep]), group_by_seed=False)
    coloured = render(table, "table", width=None, color=True)
    plain = render(table, "table", width=None, color=False)
    assert ANSI.sub("", coloured) == plain
    assert "\x1b[31m" in coloured  # the failed run in red
    # Under a pseudo-terminal `mtlrec compare` colours; NO_COLOR turns it off.
    for env_extra, expect in (({}, True), ({"NO_COLOR": "1"}, False)):
        primary, secondary = pty.openpty()
        env = {k: v for k, v in os.environ.items() if k != "NO_COLOR"}
        proc = subprocess.Popen(
            [sys.executable, "-m", "mtlrec", "compare", str(sweep), "--no-group"],
            stdin=subprocess.DEVNULL,
            stdout=secondary,
            stderr=subprocess.PIPE,
            env={**env, "COLUMNS": "80", **env_extra},
        )
        os.close(secondary)
        chunks = []
        while True:
            try:
                chunk = os.read(primary, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            chunks.append(chunk)
        os.close(primary)
        assert proc.wait(timeout=60) == 0
        text = b"".join(chunks).decode()
        assert bool(ANSI.search(text)) is expect
        assert "0.4128" in text


def test_sort_direction_comes_from_the_metric_registry(sweep, monkeypatch):
    runs = load_runs([sweep])
    table = build_table(runs, ["test/mean_auc", "test/ctr_logloss"], group_by_seed=False)
    sort_rows(table, "test/mean_auc", reverse=False)
    assert [r["test/mean_auc"] for r in table.rows][:3] == [0.8, 0.75, 0.7]
    assert table.rows[-1]["status"] == "failed"  # no value: last
    sort_rows(table, "test/ctr_logloss", reverse=False)
    assert [r["test/ctr_logloss"] for r in table.rows][:2] == [0.31, 0.31]  # lower is better
    monkeypatch.setattr(table_module, "direction", lambda key: "min")
    sort_rows(table, "test/mean_auc", reverse=False)
    assert [r["test/mean_auc"] for r in table.rows][:2] == [0.4128, 0.4932]


def test_layout_is_a_checked_choice(sweep, capsys):
    with pytest.raises(SystemExit) as info:
        main([str(sweep), "--layout", "tall"])
    assert info.value.code == 2
    assert "argument --layout: invalid choice: 'tall'" in capsys.readouterr().err


def test_the_command_offers_exactly_the_formats_and_layouts_render_knows(sweep, capsys):
    """commands/compare.py spells the choices out (its parser imports no report code)."""
    from mtlrec.commands import compare as command
    from mtlrec.report import render as render_module

    assert command.FORMATS == render_module.FORMATS
    assert command.LAYOUTS == render_module.LAYOUTS
    with pytest.raises(SystemExit) as info:
        main([str(sweep), "--format", "yaml"])
    assert info.value.code == 2
    assert capsys.readouterr().err == (
        "mtlrec compare: error: argument --format: invalid choice: 'yaml' (choose from "
        "'table', 'csv', 'markdown', 'json') (see `mtlrec compare --help`)\n"
    )
