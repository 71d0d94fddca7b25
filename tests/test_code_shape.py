"""The shape the project keeps (scripts/code_stats.py): no function over 80 lines, no module over
500, no import circle between mtlrec modules (lazy and TYPE_CHECKING imports count), no lower
layer importing a higher one."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "code_stats.py"


def load_code_stats():
    spec = importlib.util.spec_from_file_location("code_stats", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["code_stats"] = module
    spec.loader.exec_module(module)
    return module


def test_functions_modules_and_imports_stay_within_the_limits(capsys):
    stats = load_code_stats()
    code = stats.main(["--check"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "0 circle(s), 0 upward import(s)" in out


def test_the_checker_sees_a_circle_and_an_upward_import():
    stats = load_code_stats()
    graph = {
        "mtlrec.training.a": {"mtlrec.runs.b"},
        "mtlrec.runs.b": {"mtlrec.training.a"},
        "mtlrec.data.c": set(),
    }
    assert stats.cycles(graph) == [["mtlrec.runs.b", "mtlrec.training.a"]]
    assert stats.upward(graph) == ["mtlrec.training.a -> mtlrec.runs.b"]


def test_a_circle_between_modules_whose_names_share_a_prefix_counts(tmp_path):
    """sweep <-> sweep_stop once hid behind the package check: a name's prefix is no package."""
    stats = load_code_stats()
    graph = {"mtlrec.runs.sweep": {"mtlrec.runs.sweep_stop"}, "mtlrec.runs.sweep_stop": set()}
    graph["mtlrec.runs.sweep_stop"].add("mtlrec.runs.sweep")
    assert stats.cycles(graph) == [["mtlrec.runs.sweep", "mtlrec.runs.sweep_stop"]]
    package = {"mtlrec.runs": {"mtlrec.runs.lock"}, "mtlrec.runs.lock": {"mtlrec.runs"}}
    assert stats.cycles(package) == []


def test_an_import_inside_a_function_is_an_arrow(tmp_path):
    stats = load_code_stats()
    module = tmp_path / "a.py"
    module.write_text("def f():\n    from mtlrec.runs import sweep\n    return sweep\n")
    known = {"mtlrec.runs", "mtlrec.runs.sweep", "mtlrec.a"}
    assert stats.imports_of(module, "mtlrec.a", known) == {"mtlrec.runs", "mtlrec.runs.sweep"}


def test_an_import_for_type_checking_only_is_an_arrow(tmp_path):
    """trainer <-> train_epoch once hid behind `if TYPE_CHECKING:`: a type named from a module
    that imports this one is still a circle."""
    stats = load_code_stats()
    module = tmp_path / "a.py"
    module.write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from mtlrec.training.trainer import Trainer\n"
    )
    known = {"mtlrec.training.trainer", "mtlrec.a"}
    assert stats.imports_of(module, "mtlrec.a", known) == {"mtlrec.training.trainer"}


SCRIPTS = SCRIPT.parent
MAX_SCRIPT_LINES = 400


def test_no_script_is_over_the_limit():
    long = {
        p.name: n
        for p in sorted(SCRIPTS.glob("*.py"))
        if (n := len(p.read_text().splitlines())) > MAX_SCRIPT_LINES
    }
    assert long == {}, f"scripts over {MAX_SCRIPT_LINES} lines: {long}"


def test_benchmark_helpers_live_in_one_module():
    """Peak RSS, thread pinning and the per-epoch CPU timer are written once, in
    scripts/bench_common.py, and the bench scripts import them from there."""
    copies = {
        p.name
        for p in SCRIPTS.glob("bench*.py")
        if p.name != "bench_common.py"
        and any(
            marker in p.read_text()
            for marker in ("def peak_rss_mib", "def current_rss_mib", "plain_epoch = Trainer.")
        )
    }
    assert copies == set()
    users = {
        p.name for p in SCRIPTS.glob("bench*.py") if "from bench_common import" in p.read_text()
    }
    assert {"bench.py", "bench_scaling.py", "bench_streaming.py", "bench_generate.py"} <= users


def test_inside_data_the_shared_machinery_imports_no_dataset():
    """The datasets (data/sources/NAME.py and a dataset's own modules, e.g. the synthetic_ccp
    generator) sit above the shared machinery in data/: an arrow back up is counted."""
    stats = load_code_stats()
    graph = {
        "mtlrec.data.loader": {"mtlrec.data.sources.census", "mtlrec.data.spec"},
        "mtlrec.data.spec": {"mtlrec.data.ccp_generator"},
        "mtlrec.data.ccp_generator": {"mtlrec.data.sources", "mtlrec.data.spec"},
        "mtlrec.data.sources.census": {"mtlrec.data.prepare", "mtlrec.data.sources.base"},
        "mtlrec.data.sources.synthetic_ccp": {"mtlrec.data.ccp_generator"},
        "mtlrec.data.prepare.plan": {"mtlrec.data.spec"},
    }
    assert stats.upward(graph) == [
        "mtlrec.data.ccp_generator -> mtlrec.data.sources",
        "mtlrec.data.loader -> mtlrec.data.sources.census",
        "mtlrec.data.spec -> mtlrec.data.ccp_generator",
    ]


def test_the_real_data_package_has_no_upward_arrow_and_no_stale_exemption():
    stats = load_code_stats()
    mods = stats.modules()
    graph = {n: stats.imports_of(p, n, set(mods)) for n, p in mods.items()}
    data = {a: deps for a, deps in graph.items() if a.startswith("mtlrec.data")}
    assert [a for a in data if a.startswith("mtlrec.data.sources.")], "no source modules found"
    assert stats.upward(data) == []
    assert stats.stale_exemptions(graph) == []
    # nothing in data/ runs a source: `mtlrec prepare` calls the registry from commands/
    assert stats.DATA_EXEMPT == ()
