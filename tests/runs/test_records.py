"""metrics.json's schema (RunSummary), the run dir's writers (umask, declared fields) and the
shape of the packages that write, read and mirror run dirs, mtlrec.runs, mtlrec.report,
mtlrec.loggers and mtlrec.sweeps (no heavy or lower-layer imports, short modules and functions)."""

from __future__ import annotations

import ast
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from mtlrec.runs import records
from mtlrec.runs.records import SCHEMA_VERSION, RunSummary, holds_a_run, read_run
from mtlrec.runs.run_dir import RunDir, atomic_torch_save

ROOT = Path(__file__).resolve().parents[2]
REPORT = ROOT / "mtlrec" / "report"
UPPER_PACKAGES = ("runs", "report", "loggers", "sweeps")  # no lower-layer import at module level
UPPER_MODULES = sorted(p for name in UPPER_PACKAGES for p in (ROOT / "mtlrec" / name).glob("*.py"))

V1 = {  # a metrics.json as mtlrec wrote it before schema_version existed
    "status": "completed",
    "seed": 3,
    "data_order_seed": 3,
    "started_at": "2026-11-28T12:00:00",
    "error": None,
    "model": "mmoe",
    "monitor": "val/mean_auc",
    "best_epoch": 2,
    "best_value": 0.71,
    "metrics": {"val/mean_auc": 0.71, "test/mean_auc": 0.7, "test/ctr_auc": None},
    "wall_seconds": 4.5,
}


def test_a_version_1_file_reads_as_version_1_with_the_same_fields():
    summary = RunSummary.from_json(V1)
    assert summary.schema_version == 1
    assert (summary.status, summary.seed, summary.best_epoch) == ("completed", 3, 2)
    assert summary.metrics == V1["metrics"] and summary.extra == {}
    assert summary.to_json() == {"schema_version": 1, **V1}


def test_update_writes_the_current_version_and_keeps_unknown_fields(tmp_path):
    (tmp_path / "metrics.json").write_text(json.dumps({**V1, "from_the_future": [1, 2]}))
    data = RunDir(tmp_path).update_metrics(wall_seconds=float("nan"), status="interrupted")
    on_disk = json.loads((tmp_path / "metrics.json").read_text())
    assert data == on_disk
    assert on_disk["schema_version"] == SCHEMA_VERSION == 2
    assert on_disk["status"] == "interrupted" and on_disk["wall_seconds"] is None  # NaN -> null
    assert on_disk["from_the_future"] == [1, 2]
    assert {
        k: v for k, v in on_disk.items() if k not in ("schema_version", "status", "wall_seconds")
    } == {
        k: v
        for k, v in {**V1, "from_the_future": [1, 2]}.items()
        if k not in ("status", "wall_seconds")
    }


def test_an_undeclared_field_is_refused_and_nothing_is_written(tmp_path):
    run_dir = RunDir(tmp_path)
    run_dir.update_metrics(status="running", seed=1)
    before = (tmp_path / "metrics.json").read_bytes()
    with pytest.raises(TypeError) as info:
        run_dir.update_metrics(status="failed", best_epok=3)
    assert str(info.value) == (
        "metrics.json field(s) best_epok are not declared in mtlrec.runs.records.RunSummary; "
        "declare them there first"
    )
    assert (tmp_path / "metrics.json").read_bytes() == before


def test_a_new_run_writes_only_what_it_was_given_plus_version_and_error(tmp_path):
    data = RunDir(tmp_path).update_metrics(status="running", seed=7, data_order_seed=8)
    assert data == {
        "schema_version": 2,
        "status": "running",
        "error": None,
        "seed": 7,
        "data_order_seed": 8,
    }


def _update_metrics_keywords(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "update_metrics"
        ):
            names |= {kw.arg for kw in node.keywords if kw.arg}
    return names


def test_every_field_the_package_writes_is_declared():
    writers = [p for p in (ROOT / "mtlrec").rglob("*.py") if "update_metrics(" in p.read_text()]
    assert ROOT / "mtlrec" / "experiment.py" in writers
    used = set().union(*(_update_metrics_keywords(p) for p in writers))
    assert {"status", "error", "metrics", "best_epoch", "wall_seconds"} <= used
    assert used <= set(RunSummary.fields()), used - set(RunSummary.fields())


def test_read_run_reads_a_version_1_dir_and_reports_a_non_object(tmp_path):
    good = tmp_path / "good"
    good.mkdir()
    (good / "metrics.json").write_text(json.dumps(V1))
    run = read_run(good)
    assert run.summary.schema_version == 1 and run.status == "completed"
    assert run.metrics == {"val/mean_auc": 0.71, "test/mean_auc": 0.7}  # null left out
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "metrics.json").write_text("[1, 2]")
    run = read_run(bad)
    assert run.problems == ["metrics.json: ValueError: expected a JSON object, got list"]
    assert run.status == "not started"


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_files_are_created_with_the_users_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        run_dir = RunDir(tmp_path / "run")
        run_dir.update_metrics(status="running")
        run_dir.write_history([{"epoch": 1, "train/loss": 0.5}])
        run_dir.write_json("env.json", {"torch": "x"})
        atomic_torch_save({"a": 1}, run_dir.checkpoints / "last.pt")
    finally:
        os.umask(old)
    for name in ("metrics.json", "history.csv", "env.json", "checkpoints/last.pt"):
        assert stat.S_IMODE((tmp_path / "run" / name).stat().st_mode) == mode, name
    assert not list((tmp_path / "run").rglob("*.tmp"))


HEAVY = (
    "torch",
    "sklearn",
    "pandas",
    "matplotlib",
    "mtlrec.training",
    "mtlrec.models",
    "mtlrec.data",
)


def test_compare_imports_nothing_heavy():
    code = (
        "import sys, mtlrec.report.compare, mtlrec.report.plots, mtlrec.runs.records; "
        f"print([m for m in {HEAVY!r} if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def _module_level_imports(tree: ast.Module) -> list[str]:
    names = []
    for node in tree.body:
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.append(node.module)
    return names


@pytest.mark.parametrize("path", UPPER_MODULES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_run_dir_report_logger_and_sweep_modules_are_short_and_import_no_lower_layer(path):
    text = path.read_text()
    tree = ast.parse(text)
    lower = [
        m
        for m in _module_level_imports(tree)
        if m.startswith(("mtlrec.training", "mtlrec.models", "mtlrec.data"))
    ]
    assert lower == []
    assert len(text.splitlines()) < 300
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            length = node.end_lineno - node.lineno + 1
            assert length <= 80, f"{node.name}: {length} lines"


def test_compare_and_plots_do_not_import_each_other():
    for a, b in (("compare", "plots"), ("plots", "compare")):
        imports = _module_level_imports(ast.parse((REPORT / f"{a}.py").read_text()))
        assert f"mtlrec.report.{b}" not in imports
    plots = ast.parse((REPORT / "plots.py").read_text())
    lazy = [n.module for n in ast.walk(plots) if isinstance(n, ast.ImportFrom)]
    assert "mtlrec.report.compare" not in lazy


def test_file_names_have_one_home():
    from mtlrec.report import compare
    from mtlrec.runs import run_dir
    from mtlrec.sweeps import callback as sweep

    assert run_dir.METRICS_FILE is records.METRICS_FILE == "metrics.json"
    assert sweep.METRICS_FILE is records.METRICS_FILE
    assert not hasattr(compare, "METRICS_FILE") or compare.METRICS_FILE is records.METRICS_FILE
    assert (records.BEST, records.LAST, records.PREVIOUS) == ("best.pt", "last.pt", "last.prev.pt")


def test_temp_files_of_killed_processes_are_removed_when_the_run_dir_opens(tmp_path, caplog):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    ckpts = tmp_path / "checkpoints"
    ckpts.mkdir()
    stale = ckpts / f".last.pt.{dead.pid}-0badc0de.tmp"
    stale.write_bytes(b"x" * 1000)  # a checkpoint write that was killed half way
    live = tmp_path / f".metrics.json.{os.getpid()}-00000001.tmp"  # our own: being written
    live.write_text("{")
    other = tmp_path / ".notes.tmp"  # not a name the atomic writers use: not ours to remove
    other.write_text("")
    with caplog.at_level("WARNING", logger="mtlrec"):
        RunDir(tmp_path)
    assert not stale.exists() and live.exists() and other.exists()
    assert caplog.messages == [f"removed 1 temp file(s) left by killed processes: {stale.name}"]
    RunDir(tmp_path, read_only=True)  # a read-only rank removes nothing
    assert live.exists()


def test_the_parts_of_a_first_checkpoint_killed_while_written_are_no_run_to_keep(tmp_path):
    """A kill during the first checkpoint's write leaves its table files or its DCP folder and no
    last.pt: nothing to resume from, so the run may start again in its dir (it would else be
    refused both ways: resume finds no last.pt, a new start finds a run to keep)."""
    checkpoints = tmp_path / "checkpoints"
    (checkpoints / "sharded" / "e1-0a1b2c3d4e5f.tmp").mkdir(parents=True)
    (checkpoints / "sharded" / "e1-0a1b2c3d4e5f.tmp" / "__0_0.distcp").write_bytes(b"x")
    (checkpoints / "tables").mkdir()
    (checkpoints / "tables" / "e1-0a1b2c3d4e5f.base.pt").write_bytes(b"x")
    assert not holds_a_run(tmp_path)
    (checkpoints / "last.pt").mkdir()  # not a file, but not to be ignored (resume says why)
    assert holds_a_run(tmp_path)
    (checkpoints / "last.pt").rmdir()
    (checkpoints / "last.prev.pt").write_bytes(b"x")
    assert holds_a_run(tmp_path)


def test_a_refused_resume_puts_back_what_building_the_run_rewrote(tmp_path):
    """env.json and sharding_plan.json (which the next resume rebuilds the torchrec plan from)
    are rewritten while a resume builds the run; a refused attempt puts them back (a file it
    created is removed), like metrics.json and train.log."""
    from mtlrec.runs import resume
    from mtlrec.runs.records import ENV_FILE, METRICS_FILE, SHARDING_PLAN_FILE
    from mtlrec.training.torchrec_backend import SHARDING_PLAN_FILE as WRITTEN_AS

    assert SHARDING_PLAN_FILE == WRITTEN_AS  # the training layer keeps its own copy of the name
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    before = {
        METRICS_FILE: b'{"schema_version": 2, "status": "interrupted"}',
        SHARDING_PLAN_FILE: b'{"world_size": 2}',
    }
    for name, data in before.items():
        (run_dir / name).write_bytes(data)
    resume.begin(run_dir, None)
    for name in (METRICS_FILE, SHARDING_PLAN_FILE, ENV_FILE):  # env.json: new
        (run_dir / name).write_text('{"world_size": 1}')
    assert resume.settle_refused() == [run_dir]
    assert {p.name: p.read_bytes() for p in run_dir.iterdir()} == before
