"""`mtlrec prepare` shows a bar per pass over each raw file on a terminal, nothing elsewhere."""

from __future__ import annotations

import io

import rich
from rich.console import Console

from helpers.datagen import byo_config, write_events
from mtlrec.data.prepare.progress import prepare_progress
from mtlrec.data.sources import prepare_dataset


def prepare_on(tmp_path, monkeypatch, terminal: bool) -> str:
    raw, _ = write_events(tmp_path)
    out = io.StringIO()
    console = Console(file=out, force_terminal=terminal, width=120, color_system=None)
    monkeypatch.setattr(rich, "_console", console)  # what rich.get_console() returns
    with prepare_progress():
        prepare_dataset(byo_config(raw, tmp_path / "prepared"))
    return out.getvalue()


def test_a_terminal_sees_each_pass_over_each_file_with_its_rows(tmp_path, monkeypatch):
    text = prepare_on(tmp_path, monkeypatch, terminal=True)
    # fit on train (pass 1), then encode every split (train: pass 2)
    assert "train.csv (pass 1)" in text and "train.csv (pass 2)" in text
    assert "val.csv (pass 1)" in text and "test.csv (pass 1)" in text
    assert "600 rows" in text and "200 rows" in text  # the files' row counts, in full


def test_off_a_terminal_nothing_is_drawn(tmp_path, monkeypatch):
    assert prepare_on(tmp_path, monkeypatch, terminal=False) == ""
