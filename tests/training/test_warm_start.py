"""init_from=RUN_DIR (mtlrec.training.warm_start): what is loaded, skipped, new, excluded, frozen;
the optimizer state on request; every bad init_from one line; RUN_DIR never written; a resume of
a warm-started run exact without the init run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from conftest import TINY_ROWS, compose_train
from mtlrec.data.spec import DatasetSpec
from mtlrec.errors import MtlrecError
from mtlrec.models import build_model
from mtlrec.settings import RunSettings
from mtlrec.training import warm_start
from mtlrec.training.checkpoint import load_checkpoint

ONE = [f"dataset.num_rows={TINY_ROWS}", "trainer.batch_size=256", "trainer.num_threads=1"]
ONE += ["device=cpu", "trainer.progress=false"]


def train(run_dir: Path, *overrides: str, epochs: int = 1) -> dict:
    from mtlrec.experiment import run

    run(compose_train([*ONE, f"trainer.epochs={epochs}", *overrides]), run_dir)
    return json.loads((run_dir / "metrics.json").read_text())


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A finished 1-epoch MMoE run: what the warm starts start from."""
    run_dir = tmp_path_factory.mktemp("src") / "run"
    train(run_dir, "model=mmoe")
    return run_dir


def data_of(run_dir: Path) -> tuple[Path, DatasetSpec]:
    """The dataset dir and spec the run trained on."""
    data_dir = load_checkpoint(run_dir / "checkpoints/best.pt")["config"]["dataset"]["path"]
    return Path(data_dir), DatasetSpec.load(Path(data_dir))


def tree(run_dir: Path) -> dict[str, tuple[int, int]]:
    """Every file of a dir with its size and mtime (ns): what `nothing written` compares."""
    return {
        str(p.relative_to(run_dir)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(run_dir.rglob("*"))
    }


def settings(*overrides: str) -> RunSettings:
    return RunSettings.from_config(compose_train([*ONE, *overrides]))


def started(source: Path, *overrides: str, model: str = "mmoe", init: Path | None = None):
    """A new model of `model` on `source`'s data, warm-started from `init` (default: `source`;
    no training)."""
    s = settings(f"model={model}", f"init_from={init or source}", *overrides)
    data_dir, spec = data_of(source)
    torch.manual_seed(0)
    net, _ = build_model(s.config["model"], spec, spec.tasks)
    init = warm_start.start(s.init, False, net, spec, data_dir, s.model_name)
    return net, init.summary, load_checkpoint(source / "checkpoints/best.pt")["model_state"]


def test_the_same_model_loads_every_tensor_exactly(source):
    net, summary, saved = started(source)
    state = net.state_dict()
    assert summary["loaded"] == list(state) and summary["skipped"] == {}
    assert not summary["new"] and not summary["excluded"] and not summary["not_in_model"]
    for name, value in saved.items():
        assert torch.equal(state[name], value), name
    assert summary["from"] == str((source / "checkpoints/best.pt").resolve())
    assert summary["epoch"] == 1 and summary["model"] == "mmoe"


def test_mmoe_into_ple_loads_what_matches(source):
    net, summary, saved = started(source, model="ple")
    state = net.state_dict()
    assert "embedding.tables.0.weight" in summary["loaded"]
    assert torch.equal(state["embedding.tables.0.weight"], saved["embedding.tables.0.weight"])
    assert summary["new"]  # PLE's experts and gates: the model's own init
    assert all(n in state and n in saved for n in summary["loaded"])
    assert all(n not in saved for n in summary["new"])
    for name, why in summary["skipped"].items():
        assert why.startswith("shape differs") and saved[name].shape != state[name].shape


def test_include_and_exclude_patterns_leave_the_rest_at_init(source):
    _, spec = data_of(source)
    torch.manual_seed(0)
    cold, _ = build_model(settings("model=mmoe").config["model"], spec, spec.tasks)
    net, summary, saved = started(source, "init.exclude=[towers*]")
    assert summary["excluded"] and all(n.startswith("towers") for n in summary["excluded"])
    state, fresh = net.state_dict(), cold.state_dict()
    for name in summary["excluded"]:
        assert torch.equal(state[name], fresh[name]), name  # kept the init
    net, summary, _ = started(source, "init.include=[embedding.*]")
    assert summary["loaded"] == ["embedding.tables.0.weight"]


def test_a_pattern_that_matches_nothing_is_one_line(source):
    with pytest.raises(MtlrecError) as e:
        started(source, "init.freeze=[embeding.*]")
    assert str(e.value).startswith(
        "init.freeze: pattern 'embeding.*' matches no parameter name (fnmatch patterns, e.g. "
        "'embedding.*', '*experts*'); the names look like: "
    )


def test_nothing_that_fits_is_one_line(source):
    with pytest.raises(MtlrecError) as e:
        started(source, "model.embedding_dim=5", "init.include=[embedding.*]")
    rows, dim = data_of(source)[1].total_vocab, 16
    assert str(e.value) == (
        f"init_from: nothing of {source}/checkpoints/best.pt (model mmoe) fits model mmoe: no "
        f"parameter with the same name and shape (embedding.tables.0.weight: shape differs: "
        f"[{rows}, {dim}] here [{rows}, 5]); check init.include/init.exclude, or start from "
        "another run"
    )


@pytest.mark.parametrize("case", ["missing", "not_a_run", "no_best", "damaged"])
def test_each_bad_init_from_is_one_line(source, tmp_path, case):
    run_dir = tmp_path / "r"
    if case == "not_a_run":
        run_dir.mkdir()
    if case in ("no_best", "damaged"):
        shutil.copytree(source, run_dir)
    if case == "no_best":
        (run_dir / "checkpoints/best.pt").unlink()
    if case == "damaged":
        data = bytearray((run_dir / "checkpoints/best.pt").read_bytes())
        middle = len(data) // 2
        data[middle : middle + 256] = bytes(b ^ 0xFF for b in data[middle : middle + 256])
        (run_dir / "checkpoints/best.pt").write_bytes(bytes(data))
    with pytest.raises(MtlrecError) as e:
        started(source, init=run_dir)
    line = str(e.value)
    assert "\n" not in line
    expected = {
        "missing": f"init_from={run_dir}: no such directory; give the run dir of an earlier "
        "`mtlrec train`",
        "not_a_run": f"init_from={run_dir}: not a run dir (no metrics.json and checkpoints/); "
        "give the run dir of an earlier `mtlrec train`",
        "no_best": f"init_from={run_dir}: no checkpoints/best.pt (the run did not write it); "
        "use init_from_checkpoint=last or another run",
    }
    if case in expected:
        assert line == expected[case]
    else:  # the checkpoint's own integrity lines, as a resume reports them
        assert line.startswith(f"{run_dir}/checkpoints/best.pt: ")
        assert "corrupt" in line or "SHA-256" in line


def test_freeze_keeps_tables_out_of_every_optimizer_group_also_row_wise(source, tmp_path):
    """init.freeze=[embedding.*] with the row-wise optimizer: the loaded table trains not at all,
    while the rest trains; RUN_DIR stays as it was, file for file."""
    before = tree(source)
    run_dir = tmp_path / "run"
    metrics = train(
        run_dir,
        "model=mmoe",
        f"init_from={source}",
        "init.freeze=[embedding.*]",
        "trainer.embedding_optimizer=sparse_adam",
    )
    assert metrics["init"]["frozen"] == ["embedding.tables.0.weight"]
    saved = load_checkpoint(source / "checkpoints/best.pt")["model_state"]
    now = load_checkpoint(run_dir / "checkpoints/best.pt")["model_state"]
    assert torch.equal(now["embedding.tables.0.weight"], saved["embedding.tables.0.weight"])
    moved = [k for k in saved if k.startswith("towers") and not torch.equal(now[k], saved[k])]
    assert moved  # the rest trained
    assert tree(source) == before


def test_frozen_parameters_are_in_no_group():
    from mtlrec.data.ccp_generator import dataset_spec
    from mtlrec.training.optimizers import build_optimizer

    s = settings("model=mmoe", "init.freeze=[embedding.*, towers.*]")
    spec = dataset_spec(TINY_ROWS, 0)
    net, _ = build_model(s.config["model"], spec, spec.tasks)
    frozen = warm_start.freeze(net, s.init.options.freeze)
    assert frozen and all(n.startswith(("embedding.", "towers.")) for n in frozen)
    for choice in ("adam", "sparse_adam"):
        optimizer = build_optimizer(net, "adam", 1e-3, 0.0, choice)
        in_groups = {id(p) for g in optimizer.param_groups for p in g["params"]}
        named = dict(net.named_parameters())
        assert not any(id(named[n]) in in_groups for n in frozen)
        assert all(id(p) in in_groups for n, p in named.items() if n not in frozen)


def test_optimizer_state_on_request_with_this_runs_lr(source, tmp_path):
    run_dir = tmp_path / "run"
    metrics = train(
        run_dir, "model=mmoe", f"init_from={source}", "init.optimizer=true", "trainer.lr=0.005"
    )
    assert metrics["init"]["optimizer"] is True
    # the moments continued: Adam's step count is the source's steps + this run's
    src = load_checkpoint(source / "checkpoints/last.pt")["optimizer_state"]["optimizers"][0]
    now = load_checkpoint(run_dir / "checkpoints/last.pt")["optimizer_state"]["optimizers"][0]
    steps = lambda sd: int(next(iter(sd["state"].values()))["step"])  # noqa: E731
    assert steps(now) == 2 * steps(src)
    assert now["param_groups"][0]["lr"] == pytest.approx(0.005)
    with pytest.raises(MtlrecError, match=r"^init.optimizer=true loads the optimizer state of "):
        started(source, "init.optimizer=true", model="ple")


def test_resume_of_a_warm_started_run_is_exact_without_the_init_run(source, tmp_path):
    """The init is applied once: a resume reads its own last.pt, even with RUN_DIR gone."""
    init = tmp_path / "init"
    shutil.copytree(source, init)
    common = ["model=mmoe", f"init_from={init}", "model.dropout=0.2"]  # dropout draws RNG
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    train(straight, *common, epochs=2)
    train(resumed, *common, epochs=1)
    shutil.rmtree(init)
    train(resumed, *common, f"resume={resumed}", epochs=2)
    a = json.loads((straight / "metrics.json").read_text())
    b = json.loads((resumed / "metrics.json").read_text())
    assert a["metrics"] == b["metrics"] and b["status"] == "completed"
    assert b["init"] == a["init"]  # the summary of the start, not rewritten by the resume
    wa = load_checkpoint(straight / "checkpoints/last.pt")["model_state"]
    wb = load_checkpoint(resumed / "checkpoints/last.pt")["model_state"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_init_keys_without_init_from_or_with_a_path_as_checkpoint_are_one_line():
    with pytest.raises(MtlrecError) as e:
        settings("init.include=[embedding.*]")
    assert str(e.value) == (
        "init.include, init.exclude and init.optimizer say what init_from loads; set "
        "init_from=RUN_DIR (init.freeze alone needs none)"
    )
    with pytest.raises(MtlrecError) as e:
        settings("init_from=x", "init_from_checkpoint=../best")
    assert str(e.value) == (
        "init_from_checkpoint='../best': expected best, last or the name of a file of "
        "RUN_DIR/checkpoints (e.g. best_ctr)"
    )
    assert settings("init.freeze=[embedding.*]").init.options.freeze == ["embedding.*"]
