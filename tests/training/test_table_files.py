"""Big sparse tables in checkpoints: a base (a file, or a new run's seeded init) + the rows each
checkpoint changed (mtlrec/training/table_files.py): write size, exact assembly, corruption,
kill -9. The runs here seed every table (SEEDED_FROM_ROWS patched to 0), so their first
checkpoint has no base file; test_resume's sparse_adam run writes one."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from conftest import TINY, compose_train
from helpers.stops import StopAfter
from mtlrec import experiment
from mtlrec.errors import MtlrecError
from mtlrec.models import seeded_init
from mtlrec.models.seeded_init import SeededInit, fingerprint, new_table, seeded_init_of
from mtlrec.training.checkpoint import (
    LAST,
    PREVIOUS,
    load_checkpoint,
    load_resumable,
    model_from_checkpoint,
)
from mtlrec.training.row_adam import RowAdam
from mtlrec.training.signals import StopRequest, TrainingInterrupted
from mtlrec.training.table_files import TABLES_DIR, TableFiles, assemble, initial_rows

BATCH = ["trainer.batch_size=32", "model.dropout=0.2"]  # 87 steps an epoch; dropout draws RNG
SPARSE = [*TINY, *BATCH, "trainer.embedding_optimizer=sparse_adam"]
FILES = [*SPARSE, "checkpoint.table_files_min_rows=0", "checkpoint.every_n_steps=16"]
ROWS, DIM = 20_000, 4


def assert_same_run(run_dir: Path, ref_dir: Path) -> None:
    """Same metrics to the bit, same best and last weights (each loaded as readers load it)."""
    got, ref = (json.loads((d / "metrics.json").read_text()) for d in (run_dir, ref_dir))
    assert got["status"] == "completed" and got["metrics"] == ref["metrics"]
    for name in ("best.pt", LAST):
        a, b = (
            load_checkpoint(d / "checkpoints" / name)["model_state"] for d in (run_dir, ref_dir)
        )
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name


@pytest.fixture(autouse=True)
def seeded_tables(monkeypatch):
    """Every table of these runs is drawn from its own generator (as 100k+ row tables are)."""
    monkeypatch.setattr(seeded_init, "SEEDED_FROM_ROWS", 0)


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> Path:
    """The uninterrupted run, its table inside last.pt."""
    from mtlrec.experiment import run

    run_dir = tmp_path_factory.mktemp("straight") / "run"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(seeded_init, "SEEDED_FROM_ROWS", 0)
        run(compose_train(SPARSE), run_dir)
    return run_dir


def named_files(ckpts: Path) -> set[str]:
    """The table files the checkpoints of a dir name (an init entry names none)."""
    named = set()
    for name in ("best.pt", LAST, PREVIOUS):
        chains = torch.load(ckpts / name, weights_only=True)["table_files"]["chains"]
        named |= {e["file"] for chain in chains.values() for e in chain if e["file"]}
    return named


def train_rows(table: nn.Embedding, opt: RowAdam, ids: torch.Tensor) -> None:
    opt.zero_grad()
    table(ids).pow(2).sum().backward()
    opt.step()


def checkpoint(files: TableFiles, table: nn.Embedding, opt: RowAdam, epoch: int) -> dict:
    payload = {
        "model_state": {"weight": table.weight.detach()},
        "optimizer_state": opt.state_dict(),
    }
    return files.externalize(payload, epoch)


def test_a_checkpoint_writes_the_changed_rows_only_and_assembles_the_exact_state(tmp_path):
    torch.manual_seed(0)
    table = nn.Embedding(ROWS, DIM, sparse=True)
    opt = RowAdam(table.parameters(), lr=0.01, catch_up=True)
    (tmp_path / "checkpoints").mkdir()
    files = TableFiles(tmp_path / "checkpoints", opt, 0, lambda obj, path: torch.save(obj, path))
    files.directory.mkdir()
    train_rows(table, opt, torch.arange(0, ROWS, 7))
    first = checkpoint(files, table, opt, 1)
    base = files.directory / first["table_files"]["chains"]["last"][0]["file"]
    row_bytes = DIM * 4 * 3 + 8 + 8  # weight + 2 moments (float32), last_step + its id (int64)
    assert base.stat().st_size >= ROWS * (row_bytes - 8)  # every row (a base has no ids)

    for step in range(3):  # 100 rows, some of them twice
        train_rows(table, opt, torch.arange(step * 50, step * 50 + 100))
    opt.flush()  # rows 0, 7, 14, ... still have momentum: the flush moves (changes) them too
    second = checkpoint(files, table, opt, 2)
    entry = second["table_files"]["chains"]["last"][-1]
    changed = 200 + len(range(203, ROWS, 7))  # 0..199, then multiples of 7
    assert (entry["kind"], entry["rows"]) == ("delta", changed)
    delta = files.directory / entry["file"]
    assert delta.stat().st_size < changed * row_bytes + 8192  # the changed rows, not the table

    full = assemble(second, tmp_path / "checkpoints" / LAST)
    assert torch.equal(full["model_state"]["weight"], table.weight)
    state = full["optimizer_state"]["state"][0]
    for key in ("moments", "last_step", "step"):
        assert torch.equal(state[key], opt.state[table.weight][key]), key
    assert second["optimizer_state"]["state"][0]["moments"]["table_ref"]  # a reference, no tensor
    assert torch.is_tensor(opt.state[table.weight]["moments"])  # the live state is untouched

    train_rows(table, opt, torch.arange(0, ROWS, 2))  # over half the table: a new base
    third = checkpoint(files, table, opt, 3)
    assert [e["kind"] for e in third["table_files"]["chains"]["last"]] == ["base"]
    (files.directory / third["table_files"]["chains"]["last"][0]["file"]).unlink()
    with pytest.raises(MtlrecError, match=r"^\S+last.pt: its table file \S+base.pt is missing \("):
        assemble(third, tmp_path / "checkpoints" / LAST)


def test_a_new_runs_first_checkpoint_writes_the_changed_rows_only_over_its_seeded_init(tmp_path):
    torch.manual_seed(0)
    table = new_table(ROWS, DIM, 0.01)
    init = seeded_init_of(table.weight)
    assert init is not None
    table.sparse = True  # what sparse_adam sets on the model's tables
    opt = RowAdam(table.parameters(), lr=0.01, catch_up=True)
    (tmp_path / "checkpoints").mkdir()
    save = lambda obj, path: torch.save(obj, path)  # noqa: E731
    files = TableFiles(tmp_path / "checkpoints", opt, 0, save)
    files.adopt({}, as_drawn=True)  # a new run without init_from
    files.directory.mkdir()
    train_rows(table, opt, torch.arange(0, ROWS, 7))
    first = checkpoint(files, table, opt, 1)
    chain = first["table_files"]["chains"]["last"]
    assert [(e["kind"], e["rows"]) for e in chain] == [
        ("init", 0),
        ("delta", len(range(0, ROWS, 7))),
    ]
    assert [p.name for p in files.directory.iterdir()] == [chain[1]["file"]]  # no base file
    full = assemble(first, tmp_path / "checkpoints" / LAST)
    assert torch.equal(full["model_state"]["weight"], table.weight)
    state = full["optimizer_state"]["state"][0]
    for key in ("moments", "last_step", "step"):
        assert torch.equal(state[key], opt.state[table.weight][key]), key

    untouched = torch.tensor([ROWS - 2, 1, 2])  # no multiple of 7: still as drawn
    weight = initial_rows(chain[0], "model_state/weight", untouched)
    assert torch.equal(weight, table.weight[untouched])
    moments = initial_rows(chain[0], "optimizer_state/state/0/moments", untouched)
    assert torch.equal(moments, torch.zeros(3, 2 * DIM))

    fill = chain[0]["fills"]["model_state/weight"]
    fill["seeded"] = {"seed": init.seed}  # edited: no std
    with pytest.raises(MtlrecError, match=r"^\S+last.pt: the init entry of table model_state/"):
        assemble(first, tmp_path / "checkpoints" / LAST)
    fill["seeded"] = {**init.to_dict(), "seed": init.seed + 1}  # not the table's generator
    with pytest.raises(MtlrecError) as info:
        assemble(first, tmp_path / "checkpoints" / LAST)
    assert str(info.value) == (
        f"{tmp_path / 'checkpoints' / LAST}: table model_state/weight drawn again from its seeded "
        f"init (seed {init.seed + 1}) does not match the fingerprint taken when it was first "
        "drawn; use an older checkpoint"
    )

    # weights loaded over the table: a base file (the run passes no seeded inits with init_from
    # or resume; this sampled check is a cheap second guard)
    twin = new_table(ROWS, DIM, 0.01)
    twin.sparse = True
    with torch.no_grad():
        twin.weight.mul_(2.0)
    twin_opt = RowAdam(twin.parameters(), lr=0.01, catch_up=True)
    files = TableFiles(tmp_path / "checkpoints", twin_opt, 0, save)
    files.adopt({}, as_drawn=True)
    assert files.seeded == {}
    kinds = [
        e["kind"] for e in checkpoint(files, twin, twin_opt, 1)["table_files"]["chains"]["last"]
    ]
    assert kinds == ["base"]


def test_a_seeded_table_is_integers_rounded_once_and_a_small_table_keeps_its_init(monkeypatch):
    init = SeededInit(123, 0.01, "", chunk_rows=1000)
    weight = init.draw([2500, 3])  # three chunks, a generator each
    scale = torch.tensor(3**0.5 * 0.01 / (1 << 23), dtype=torch.float32).double()
    for chunk, rows in enumerate(weight.split(1000)):
        g = torch.Generator().manual_seed(seeded_init._chunk_seed(123, chunk))
        ints = torch.randint(0, 1 << 24, tuple(rows.shape), generator=g, dtype=torch.int32)
        assert torch.equal(rows, ((ints - (1 << 23)).double() * scale).float())  # exact product
    assert abs(float(weight.std()) - 0.01) < 3e-4 and float(weight.abs().max()) <= 3**0.5 * 0.01
    assert not torch.equal(weight[:1000], weight[1000:2000])
    rows = torch.tensor([2499, 3, 1500, 3, 0])
    assert torch.equal(init.draw_rows([2500, 3], rows), weight[rows])  # two chunks drawn
    assert fingerprint(weight) == fingerprint(init.draw([2500, 3]))
    assert fingerprint(weight) != fingerprint(SeededInit(124, 0.01, "", 1000).draw([2500, 3]))

    monkeypatch.setattr(seeded_init, "SEEDED_FROM_ROWS", 100_000)
    torch.manual_seed(0)
    small = new_table(99_999, 2, 0.05)
    torch.manual_seed(0)
    ref = nn.Embedding(99_999, 2)
    nn.init.normal_(ref.weight, std=0.05)
    assert seeded_init_of(small.weight) is None and torch.equal(
        small.weight, ref.weight
    )  # as before: N(0, std^2)


def test_a_damaged_delta_is_named_in_one_line_and_the_previous_checkpoint_resumes_exactly(
    tmp_path, straight, monkeypatch, caplog
):
    from mtlrec.experiment import run

    monkeypatch.setattr(StopAfter, "k", 40)
    monkeypatch.setattr("mtlrec.experiment.StopRequest", StopAfter)
    run_dir, ckpts = tmp_path / "run", tmp_path / "run" / "checkpoints"
    with pytest.raises(TrainingInterrupted):
        run(compose_train(FILES), run_dir)
    chain = torch.load(ckpts / LAST, weights_only=True)["table_files"]["chains"]["last"]
    # steps 16 and 32 and the stop: the new run's init, then only changed rows, no base file
    assert [e["kind"] for e in chain] == ["init", "delta", "delta", "delta"]
    assert not list((ckpts / TABLES_DIR).glob("*.base.pt"))
    delta = ckpts / TABLES_DIR / chain[-1]["file"]
    data = bytearray(delta.read_bytes())
    data[len(data) // 2] ^= 0xFF
    delta.write_bytes(bytes(data))
    line = (
        f"{ckpts / LAST}: table file {delta} does not match its SHA-256 in the checkpoint (the "
        "file is corrupt); use an older checkpoint"
    )
    with pytest.raises(MtlrecError) as info:
        load_checkpoint(ckpts / LAST)
    assert str(info.value) == line
    payload, path = load_resumable(ckpts)
    assert path == ckpts / PREVIOUS and payload["train_state"]["step"] == 32
    assert f"{line}; falling back to {ckpts / PREVIOUS}" in caplog.text

    monkeypatch.setattr("mtlrec.experiment.StopRequest", StopRequest)
    draws = count_draws(monkeypatch)
    built = []  # the draws made while the resumed run's model was built
    building = experiment.build_model

    def build_model(*args):
        before = len(draws)
        model = building(*args)
        built.append(len(draws) - before)
        return model

    monkeypatch.setattr(experiment, "build_model", build_model)
    run(compose_train([*FILES, f"resume={run_dir}"]), run_dir)
    assert_same_run(run_dir, straight)
    assert {p.name for p in (ckpts / TABLES_DIR).iterdir()} == named_files(ckpts)  # no others
    assert built == [0]  # restore sets the weights: none drawn first

    # evaluate/predict/export: each seeded table of best.pt's init entry drawn once, not twice
    chain = torch.load(ckpts / "best.pt", weights_only=True)["table_files"]["chains"]["last"]
    fills = chain[0].get("fills", {}) if chain[0]["kind"] == "init" else {}
    seeded = [name for name, fill in fills.items() if "seeded" in fill]
    draws.clear()
    payload = load_checkpoint(ckpts / "best.pt")
    model, _, _ = model_from_checkpoint(payload)
    assert len(draws) == len(seeded) and len(seeded) >= 1
    weights = model.state_dict()
    assert all(torch.equal(weights[k], v) for k, v in payload["model_state"].items())


def count_draws(monkeypatch) -> list[SeededInit]:
    """The seeded tables drawn from now on (SeededInit.draw_into's calls)."""
    draws: list[SeededInit] = []
    drawn = SeededInit.draw_into
    monkeypatch.setattr(SeededInit, "draw_into", lambda s, w, *a: draws.append(s) or drawn(s, w))
    return draws


@pytest.mark.slow  # a second process
def test_kill_9_while_last_pt_is_written_resumes_exactly_from_the_previous_one(
    tmp_path, straight, monkeypatch
):
    """The resumed process writes step 48's delta, moves last.pt to last.prev.pt and is killed
    while writing the new last.pt: last.prev.pt and its files resume; the orphan goes."""
    from mtlrec.experiment import run

    monkeypatch.setattr(StopAfter, "k", 40)
    monkeypatch.setattr("mtlrec.experiment.StopRequest", StopAfter)
    run_dir, ckpts = tmp_path / "run", tmp_path / "run" / "checkpoints"
    with pytest.raises(TrainingInterrupted):
        run(compose_train(FILES), run_dir)
    before = {p.name for p in (ckpts / TABLES_DIR).iterdir()}
    # what `mtlrec train` records for `resume=` to replay (this run was started in-process)
    (run_dir / ".hydra").mkdir()
    (run_dir / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in FILES))
    marker = tmp_path / "paused"
    env = {**os.environ, "MTLREC_FAULT_PAUSE_WRITE": f"{LAST}:{marker}"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "mtlrec", "train", f"resume={run_dir}"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.time() + 180
        while not marker.exists():
            assert proc.poll() is None and time.time() < deadline, proc.communicate()[0]
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not (ckpts / LAST).exists()
    new = {p.name for p in (ckpts / TABLES_DIR).iterdir()} - before
    assert len(new) == 1 and new.pop().endswith(".delta.pt")  # step 48's, named by no checkpoint

    monkeypatch.setattr("mtlrec.experiment.StopRequest", StopRequest)
    run(compose_train([*FILES, f"resume={run_dir}"]), run_dir)
    assert_same_run(run_dir, straight)
    assert not list(ckpts.rglob("*.tmp"))
    assert {p.name for p in (ckpts / TABLES_DIR).iterdir()} == named_files(ckpts)


@pytest.mark.slow  # two runs of 2 spawned ranks (~20 s each)
def test_two_ranks_table_files_hold_the_rows_either_ranks_batches_changed(tmp_path):
    """DDP: rank 0 writes the files, and a row only rank 1's batches used changes on rank 0 too
    (the step applies the all-reduced sparse gradient). item_id's vocabulary is widened to 100k
    ids (its ids unchanged), so the fused table is seeded on both ranks (the spawned ranks draw
    it as any run does) and the chain starts at its init. The chain (mid-epoch checkpoints and
    epoch ends) assembles to the state that a run keeping the table inside last.pt holds, to
    the bit. With trainer.keep_best_per_task (rank 0: each task's tables as its files, rank 1:
    copies) the per-task results and best_<task>.pt are the whole run's too."""
    from conftest import TINY_ROWS, run_training
    from mtlrec.data.sources.synthetic_ccp import ensure_prepared

    tiny, data = ensure_prepared(tmp_path / "tiny", TINY_ROWS, 0), tmp_path / "data"
    spec = json.loads((tiny / "spec.json").read_text())
    next(f for f in spec["features"] if f["name"] == "item_id")["vocab_size"] = 100_000
    data.mkdir()
    (data / "spec.json").write_text(json.dumps(spec))  # an edited copy: no checksums.json
    for split_file in spec["splits"].values():
        shutil.copy(tiny / split_file, data / split_file)
    ranks = ["dataset=prepared", f"dataset.path={data}", "trainer.epochs=2", *BATCH]
    ranks += ["trainer.embedding_optimizer=sparse_adam", "trainer.devices=2"]
    ranks += [
        "checkpoint.every_n_steps=10",
        "trainer.patience=null",
        "trainer.keep_best_per_task=true",
    ]
    files, got = run_training(tmp_path, [*ranks, "checkpoint.table_files_min_rows=0"], "files")
    whole, ref = run_training(tmp_path, [*ranks, "checkpoint.table_files_min_rows=null"], "whole")
    assert got["metrics"] == ref["metrics"] and got["per_task_best"] == ref["per_task_best"]
    assert set(got["per_task_best"]["tasks"]) == {"ctr", "cvr"}
    raw = torch.load(files / "checkpoints" / LAST, weights_only=True)
    kinds = [e["kind"] for e in raw["table_files"]["chains"]["last"]]
    assert kinds[0] == "init" and kinds[1:] and set(kinds[1:]) == {"delta"}
    assert not list((files / "checkpoints" / TABLES_DIR).glob("*.base.pt"))
    for name in (LAST, "best.pt", "best_ctr.pt", "best_cvr.pt"):
        got, ref = (load_checkpoint(d / "checkpoints" / name) for d in (files, whole))
        for key in ("model_state", "optimizer_state"):
            a, b = (dict(_flat(p[key])) for p in (got, ref))
            assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), (name, key)


def _flat(obj, prefix: str = ""):
    if torch.is_tensor(obj):
        yield prefix, obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from _flat(v, f"{prefix}/{k}")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from _flat(v, f"{prefix}[{i}]")


def test_the_setting_is_checked(tmp_path):
    from mtlrec.experiment import run

    with pytest.raises(MtlrecError, match="^checkpoint.table_files_min_rows must be an integer"):
        run(compose_train([*TINY, "checkpoint.table_files_min_rows=-1"]), Path(tmp_path) / "r")


def _one_checkpoint(tmp_path: Path) -> tuple[TableFiles, Path]:
    """checkpoints/ holding last.pt and the one table file it names (what collect keeps)."""
    table = nn.Embedding(100, DIM, sparse=True)
    opt = RowAdam(table.parameters(), lr=0.01, catch_up=True)
    ckpts = tmp_path / "checkpoints"
    ckpts.mkdir()
    files = TableFiles(ckpts, opt, 0, lambda obj, path: torch.save(obj, path))
    files.directory.mkdir()
    train_rows(table, opt, torch.arange(0, 100, 3))
    torch.save(checkpoint(files, table, opt, 1), ckpts / LAST)
    return files, ckpts


def test_collect_deletes_only_the_files_mtlrec_wrote_that_no_checkpoint_names(tmp_path, caplog):
    """A user's file in tables/ (even a .pt one, or one named almost as mtlrec names its own)
    is left alone with one warning; an orphan of mtlrec's naming is deleted."""
    files, ckpts = _one_checkpoint(tmp_path)
    named = files.chain[0]["file"]
    orphan = "e2-00aa11bb22cc.delta.pt"  # a kill after the file, before the last.pt naming it
    theirs = ["e2-00aa11bb22cc.delta.pt.bak", "my_table.pt", "notes.txt"]
    for name in [orphan, *theirs]:
        (files.directory / name).write_bytes(b"x")
    (files.directory / "e3-00aa11bb22cc.base.pt").mkdir()  # a folder: not what mtlrec writes
    theirs.insert(0, "e3-00aa11bb22cc.base.pt")
    assert [p.name for p in files.collect()] == [orphan]
    assert sorted(p.name for p in files.directory.iterdir()) == sorted([named, *theirs])
    told = sorted(r.getMessage() for r in caplog.records if "left alone" in r.getMessage())
    assert told == [
        f"{files.directory / name}: not written by mtlrec, so left alone (checkpoints/tables/ "
        "holds what mtlrec writes; keep other files elsewhere)"
        for name in sorted(theirs)
    ]


def test_a_pt_file_that_is_no_checkpoint_stops_the_collection_with_one_warning(tmp_path, caplog):
    """Deleting nothing is safe (the file may name table files), but silent: tables/ would grow
    unseen. One warning naming the file, once a process; the orphan is deleted once it is gone."""
    files, ckpts = _one_checkpoint(tmp_path)
    orphan = files.directory / "e2-00aa11bb22cc.delta.pt"
    orphan.write_bytes(b"x")
    torch.save([1, 2, 3], ckpts / "mine.pt")  # a user's list, not a checkpoint
    assert files.collect() == [] and files.collect() == [] and orphan.exists()
    told = [r.getMessage() for r in caplog.records if "cannot be read as a checkpoint" in r.message]
    assert told == [
        f"{ckpts / 'mine.pt'} cannot be read as a checkpoint (AttributeError: 'list' object has "
        f"no attribute 'get'), so nothing in {files.directory} is deleted while it is "
        "there; move it out of checkpoints/ if it is not one"
    ]
    (ckpts / "mine.pt").unlink()
    assert files.collect() == [orphan]


def test_a_full_disk_while_a_table_file_is_written_is_one_line_and_leaves_no_file(
    tmp_path, monkeypatch
):
    """The native path's counterpart of a DCP folder's failed write (test_dcp_files.py): the
    table file goes through atomic_write, so a full disk is one line naming it, its temp file
    removed, and no last.pt names it (the checkpoint's payload is never made)."""
    import errno

    from mtlrec.runs import run_dir as run_dir_module

    table = nn.Embedding(100, DIM, sparse=True)
    opt = RowAdam(table.parameters(), lr=0.01, catch_up=True)
    ckpts = tmp_path / "checkpoints"
    ckpts.mkdir()
    files = TableFiles(ckpts, opt, 0, run_dir_module.atomic_torch_save)
    files.directory.mkdir()
    train_rows(table, opt, torch.arange(0, 100, 3))

    def full_disk_save(obj, f):
        f.write(b"x" * 100)  # part of the file made it, then the disk was full
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(run_dir_module.torch, "save", full_disk_save)
    with pytest.raises(MtlrecError) as info:
        checkpoint(files, table, opt, 1)
    file = Path(str(info.value).split(": ")[0])
    assert file.parent == files.directory and file.name.endswith(".base.pt")
    assert str(info.value) == (
        f"{file}: cannot write it: No space left on device; free some space on that disk (its "
        "previous version, if any, is kept) and run again"
    )
    assert list(files.directory.iterdir()) == [] and not (ckpts / LAST).exists()
