"""evaluate, predict and export draw a progress bar under a terminal (erased when done, never on a
line with their output) and print nothing of it in a pipe."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

from conftest import TINY
from helpers.cli import BAR, lines, mtlrec, run_in_pty, screen_segments

METRIC_LINE = re.compile(r"^test/\S+\s+\d+\.\d{6}$")  # pcoc can exceed 9


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("bars")
    out = mtlrec("train", *TINY, "trainer.epochs=1", f"hydra.run.dir={root / 'run'}", cwd=root)
    assert out.returncode == 0, out.stderr
    return root / "run"


def _script() -> Path:
    script = Path(sys.executable).parent / "mtlrec"
    if not script.exists():
        pytest.skip("needs the installed mtlrec script")
    return script


def test_evaluate_draws_a_steps_bar_on_a_terminal_only(run_dir, tmp_path):
    code, out = run_in_pty([str(_script()), "evaluate", str(run_dir)], tmp_path)
    assert code == 0, out
    segments = screen_segments(out)
    bars = [s for s in segments if BAR in s]
    assert bars and all(s.lstrip().startswith("evaluate") for s in bars)
    assert any("/3" in s for s in bars)  # step k of 3
    metric_lines = [s.strip() for s in segments if METRIC_LINE.match(s.strip())]
    assert "test/mean_auc" in " ".join(metric_lines)
    assert not any(BAR in s and METRIC_LINE.search(s.strip()) for s in segments)

    piped = mtlrec("evaluate", str(run_dir), cwd=tmp_path)
    assert piped.returncode == 0 and BAR not in piped.stdout + piped.stderr
    assert all(METRIC_LINE.match(ln) for ln in lines(piped.stdout))


def test_export_draws_its_bar_on_a_terminal_only(run_dir, tmp_path):
    out_dir = tmp_path / "exp"
    code, out = run_in_pty(
        [str(_script()), "export", str(run_dir), "--format", "torchscript", "--output",
         str(out_dir)], tmp_path,
    )  # fmt: skip
    assert code == 0, out
    bars = [s for s in screen_segments(out) if BAR in s]
    assert bars and all(s.lstrip().startswith("export") for s in bars)
    assert (out_dir / "model.pt").is_file()
    piped = mtlrec(
        "export", str(run_dir), "--format", "torchscript", "--output", str(tmp_path / "exp2"),
        cwd=tmp_path,
    )  # fmt: skip
    assert piped.returncode == 0 and BAR not in piped.stdout + piped.stderr
    assert lines(piped.stdout)[0] == (
        f"wrote {tmp_path / 'exp2' / 'model.pt'} and {tmp_path / 'exp2' / 'spec.json'}"
    )
