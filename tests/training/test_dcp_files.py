"""The DCP folders of sharded tables (mtlrec/training/dcp_files.py), in one process: a folder is
gathered into the ordinary layout, a damaged or missing file is refused naming it, a metadata
pickle that would run code is refused without running it, and only folders no checkpoint names
are collected. The 2-rank writing and resuming: tests/training/test_torchrec_ranks.py (slow)."""

from __future__ import annotations

import errno
import os
import pickle
from pathlib import Path

import pytest
import torch
import torch.distributed.checkpoint as dcp

from mtlrec.errors import MtlrecError
from mtlrec.training import dcp_files
from mtlrec.training.dcp_files import SHARDED_KEY

TABLE = "embedding.tables.0.weight"
FUSED_KEY = "0/collections.0.embeddings.table_0.weight/table_0.momentum1"


def _folder(checkpoints: Path, name: str, seed: int) -> tuple[dict, dict[str, torch.Tensor]]:
    """A DCP folder as a 1-rank run writes it; (its part of a manifest, what it holds)."""
    g = torch.Generator().manual_seed(seed)
    state = {
        f"model_state/{TABLE}": torch.randn(50, 8, generator=g),
        f"fused_tables/{FUSED_KEY}": torch.rand(50, 8, generator=g),
    }
    folder = checkpoints / "sharded" / name
    dcp.save(state, storage_writer=dcp.FileSystemWriter(folder), no_dist=True)
    files = {p.name: dcp_files.file_sha256(p) for p in sorted(folder.iterdir())}
    return {"folder": f"sharded/{name}", "files": files}, state


def _payload(checkpoints: Path) -> tuple[dict, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """A payload naming folder `a` (its tables) and `b` (the best weights' tables)."""
    now, state = _folder(checkpoints, "a", 0)
    best, best_state = _folder(checkpoints, "b", 1)
    manifest = {
        "format": dcp_files.FORMAT,
        **now,
        "model_keys": [TABLE],
        "fused_keys": [FUSED_KEY],
        "best": {**best, "keys": [TABLE]},
        "world_size": 2,
    }
    dense = {"towers.0.weight": torch.ones(3)}
    payload = {
        "model_state": dict(dense),
        "optimizer_state": {"optimizers": []},
        "train_state": {"best_state": dict(dense), "step": None},
        SHARDED_KEY: manifest,
    }
    return payload, state, best_state


def test_a_folder_is_gathered_into_the_ordinary_layout(tmp_path):
    payload, state, best = _payload(tmp_path)
    out = dcp_files.gather(payload, tmp_path / "last.pt")
    assert SHARDED_KEY not in out
    assert out["model_state"].keys() == {"towers.0.weight", TABLE}
    assert torch.equal(out["model_state"][TABLE], state[f"model_state/{TABLE}"])
    fused = out["optimizer_state"]["fused_tables"]
    assert list(fused) == [FUSED_KEY]
    assert torch.equal(fused[FUSED_KEY], state[f"fused_tables/{FUSED_KEY}"])
    assert torch.equal(out["train_state"]["best_state"][TABLE], best[f"model_state/{TABLE}"])
    assert torch.equal(out["train_state"]["best_state"]["towers.0.weight"], torch.ones(3))
    assert SHARDED_KEY in payload and TABLE not in payload["model_state"]  # not changed


def test_a_damaged_or_missing_file_is_refused_naming_it(tmp_path):
    payload, _, _ = _payload(tmp_path)
    ckpt = tmp_path / "best.pt"
    shard = tmp_path / "sharded" / "b" / "__0_0.distcp"  # the best weights' folder
    data = bytearray(shard.read_bytes())
    data[-1] ^= 1
    shard.write_bytes(bytes(data))
    with pytest.raises(MtlrecError) as info:
        dcp_files.gather(payload, ckpt)
    assert str(info.value) == (
        f"{ckpt}: sharded tables file {shard} does not match its SHA-256 in the checkpoint "
        "(corrupt, or from another run); use an older checkpoint"
    )
    shard.unlink()
    with pytest.raises(MtlrecError) as info:
        dcp_files.verify(payload[SHARDED_KEY], ckpt)
    assert str(info.value) == (
        f"{ckpt}: its sharded tables file {shard} is missing (a checkpoint of sharded tables is "
        "its .pt file plus the folder it names); use an older checkpoint"
    )


class _RunsCode:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


def test_a_metadata_pickle_that_would_run_code_is_refused_without_running_it(tmp_path):
    """Even with its SHA-256 in the manifest (last.pt and the folder both replaced)."""
    payload, _, _ = _payload(tmp_path)
    marker = tmp_path / "ran"
    metadata = tmp_path / "sharded" / "a" / ".metadata"
    metadata.write_bytes(pickle.dumps(_RunsCode(marker)))
    payload[SHARDED_KEY]["files"][".metadata"] = dcp_files.file_sha256(metadata)
    with pytest.raises(MtlrecError) as info:
        dcp_files.gather(payload, tmp_path / "last.pt")
    assert str(info.value) == (
        f"{tmp_path / 'last.pt'}: its sharded tables in {metadata.parent} cannot be read "
        f"(UnpicklingError: {os.mkdir.__module__}.mkdir is not DCP metadata); use an older "
        "checkpoint"
    )
    assert not marker.exists()


ORPHAN, UNFINISHED = "e3-0c0c0c0c0c0c", "e4-0d0d0d0d0d0d.tmp"  # folders as mtlrec names them


def test_only_folders_no_checkpoint_names_are_collected(tmp_path, caplog):
    """Only what mtlrec wrote there is deleted: a user's folder or file in sharded/, even one
    that looks like a checkpoint's, stays, with one warning each."""
    payload, _, _ = _payload(tmp_path)
    torch.save(payload, tmp_path / "last.pt")  # names a and (its best) b
    # an orphan (a kill before last.pt), an unfinished write, a user's copy, a user's notes
    for name in (ORPHAN, UNFINISHED, "my-copy", "e5-0e0e0e0e0e0e.tmp.bak"):
        _folder(tmp_path, name, 2)
    (tmp_path / "sharded" / "notes.txt").write_text("mine")
    (tmp_path / "sharded" / "e6-0f0f0f0f0f0f").write_text("a file, not a folder")
    cache: dict = {}
    (tmp_path / "foreign.pt").write_bytes(b"not a checkpoint")
    assert dcp_files.collect(tmp_path, cache) == []  # an unreadable checkpoint: keep all
    assert dcp_files.collect(tmp_path, cache) == []  # ... and say so, once
    unreadable = [r.getMessage() for r in caplog.records if "cannot be read as" in r.getMessage()]
    assert len(unreadable) == 1 and unreadable[0].startswith(f"{tmp_path / 'foreign.pt'} cannot")
    assert unreadable[0].endswith(
        f"so nothing in {tmp_path / 'sharded'} is deleted while it is there; move it out of "
        "checkpoints/ if it is not one"
    )
    (tmp_path / "foreign.pt").unlink()
    removed = dcp_files.collect(tmp_path, cache)
    assert sorted(p.name for p in removed) == [ORPHAN, UNFINISHED]
    assert sorted(p.name for p in (tmp_path / "sharded").iterdir()) == [
        "a", "b", "e5-0e0e0e0e0e0e.tmp.bak", "e6-0f0f0f0f0f0f", "my-copy", "notes.txt"
    ]  # fmt: skip
    assert (tmp_path / "sharded" / "notes.txt").read_text() == "mine"
    theirs = ("e5-0e0e0e0e0e0e.tmp.bak", "e6-0f0f0f0f0f0f", "my-copy", "notes.txt")
    told = [
        f"{tmp_path / 'sharded' / name}: not written by mtlrec, so left alone (checkpoints/"
        "sharded/ holds what mtlrec writes; keep other files elsewhere)"
        for name in theirs
    ]
    assert sorted(r.getMessage() for r in caplog.records if "left alone" in r.getMessage()) == told
    assert dcp_files.collect(tmp_path, cache) == []
    assert len([r for r in caplog.records if "left alone" in r.getMessage()]) == 4  # once each


def test_the_setting_is_checked(tmp_path):
    from conftest import TINY, compose_train
    from mtlrec.experiment import run

    with pytest.raises(MtlrecError) as info:
        run(compose_train([*TINY, "checkpoint.sharded=rank0"]), Path(tmp_path) / "r")
    assert str(info.value) == "checkpoint.sharded must be auto or gathered, got 'rank0'"


@pytest.mark.parametrize(("backend", "devices"), [("native", 1), ("native", 2), ("torchrec", 1)])
def test_gathered_is_refused_where_no_table_is_sharded_over_ranks(backend, devices):
    """checkpoint.sharded=gathered changes only what TorchRec's tables sharded over several
    ranks write: elsewhere it is refused in one line, not accepted as a silent no-op."""
    from conftest import TINY, compose_train
    from mtlrec.settings import RunSettings

    trainer = [f"trainer.embedding_backend={backend}", f"trainer.devices={devices}"]
    if backend == "torchrec":
        trainer.append("trainer.embedding_optimizer=rowwise_adagrad")
    gathered = compose_train([*TINY, *trainer, "checkpoint.sharded=gathered"])
    with pytest.raises(MtlrecError) as info:
        RunSettings.from_config(gathered)
    assert str(info.value) == (
        "checkpoint.sharded=gathered applies only to trainer.embedding_backend=torchrec with "
        "trainer.devices > 1 (tables sharded over several ranks), not to this run's "
        f"trainer.embedding_backend={backend} trainer.devices={devices}, whose checkpoints hold "
        "whole tables anyway; remove it (resuming such a run: add checkpoint.sharded=auto)"
    )
    auto = compose_train([*TINY, *trainer, "checkpoint.sharded=auto"])
    assert RunSettings.from_config(auto).checkpoint.sharded == "auto"


def test_gathered_is_accepted_for_tables_sharded_over_ranks():
    from conftest import TINY, compose_train
    from mtlrec.settings import RunSettings

    overrides = ["trainer.embedding_backend=torchrec", "trainer.devices=2",
                 "trainer.embedding_optimizer=rowwise_adagrad", "checkpoint.sharded=gathered"]  # fmt: skip
    settings = RunSettings.from_config(compose_train([*TINY, *overrides]))
    assert settings.checkpoint.sharded == "gathered"


def test_a_run_resumed_without_sharding_collects_the_folders_of_before(tmp_path):
    """A sharded run resumed in one process (or checkpoint.sharded=gathered) writes full tables;
    its collection also deletes the folders its checkpoints no longer name, keeping best.pt's."""
    from mtlrec.training.torchrec_checkpoint import GatheredTables

    payload, _, _ = _payload(tmp_path)
    torch.save(payload, tmp_path / "best.pt")  # the best epoch's, sharded: names a and b
    _folder(tmp_path, ORPHAN, 2)  # the folder of a last.pt since replaced by a gathered one
    torch.save({"model_state": {}}, tmp_path / "last.pt")
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    tables = GatheredTables(tmp_path, optimizer, 100_000, lambda body, path: None, True)
    assert [p.name for p in tables.collect()] == [ORPHAN]
    assert sorted(p.name for p in (tmp_path / "sharded").iterdir()) == ["a", "b"]


def test_a_run_resumed_on_several_ranks_collects_the_table_files_of_before(tmp_path):
    """A one-process run whose tables went to tables/ (table files), resumed on several ranks
    (DCP folders from then on): the files no checkpoint names any more are deleted, the ones
    best.pt names kept."""
    from mtlrec.training.table_files import TABLES_KEY
    from mtlrec.training.torchrec_checkpoint import ShardedCheckpointer

    (tmp_path / "tables").mkdir()
    for name in ("e1-0a1b2c3d4e5f.base.pt", "e2-0a1b2c3d4e5f.delta.pt", "my_table.pt"):
        torch.save({}, tmp_path / "tables" / name)  # the last: a user's file, left alone
    entry = {"file": "e1-0a1b2c3d4e5f.base.pt", "kind": "base", "rows": 0, "sha256": ""}
    torch.save({TABLES_KEY: {"chains": {"last": [entry]}}}, tmp_path / "best.pt")
    payload, _, _ = _payload(tmp_path)
    torch.save(payload, tmp_path / "last.pt")  # sharded from now on: names a and b
    tables = ShardedCheckpointer(tmp_path, torch.nn.Module(), None, True)
    assert [p.name for p in tables.collect()] == ["e2-0a1b2c3d4e5f.delta.pt"]
    assert sorted(p.name for p in (tmp_path / "tables").iterdir()) == [
        "e1-0a1b2c3d4e5f.base.pt", "my_table.pt"
    ]  # fmt: skip
    assert sorted(p.name for p in (tmp_path / "sharded").iterdir()) == ["a", "b"]


def test_a_folder_holding_a_pickled_object_instead_of_a_tensor_is_refused_without_running_it(
    tmp_path,
):
    """DCP reads a non-tensor item with torch.load(weights_only=False): a folder whose table is
    such an item (its metadata made to look like a tensor's, the SHA-256s in the manifest) would
    run the code of its pickle."""
    from torch.distributed.checkpoint.metadata import TensorProperties

    payload, _, _ = _payload(tmp_path)
    marker, folder = tmp_path / "ran", tmp_path / "sharded" / "a"
    for file in folder.iterdir():
        file.unlink()
    with pytest.warns(UserWarning):  # DCP: "torch.distributed is ... uninitialized"
        dcp.save(
            {f"model_state/{TABLE}": _RunsCode(marker)},
            storage_writer=dcp.FileSystemWriter(folder),
            no_dist=True,
        )
    with open(folder / ".metadata", "rb") as f:
        metadata = pickle.load(f)
    entry = metadata.state_dict_metadata[f"model_state/{TABLE}"]  # BytesStorageMetadata
    entry.size, entry.properties = torch.Size([50, 8]), TensorProperties(dtype=torch.float32)
    (folder / ".metadata").write_bytes(pickle.dumps(metadata))
    manifest = payload[SHARDED_KEY]
    manifest["files"] = {p.name: dcp_files.file_sha256(p) for p in sorted(folder.iterdir())}
    manifest["fused_keys"] = []
    with pytest.raises(MtlrecError) as info:
        dcp_files.gather(payload, tmp_path / "last.pt")
    assert str(info.value) == (
        f"{tmp_path / 'last.pt'}: its sharded tables in {folder} cannot be read (UnpicklingError: "
        f"model_state/{TABLE} is a BytesStorageMetadata, not a tensor); use an older checkpoint"
    )
    assert not marker.exists()


def test_a_folder_dcp_cannot_read_is_one_line_not_a_traceback(tmp_path):
    """DCP raises a CheckpointException (a BaseException, not an Exception) for what fails inside
    it: here a shard file that matches the manifest's SHA-256 but is not what .metadata says."""
    payload, _, _ = _payload(tmp_path)
    shard = tmp_path / "sharded" / "a" / "__0_0.distcp"
    shard.write_bytes(shard.read_bytes()[:100])  # truncated, its digest written into last.pt
    payload[SHARDED_KEY]["files"][shard.name] = dcp_files.file_sha256(shard)
    with pytest.raises(MtlrecError) as info:
        dcp_files.gather(payload, tmp_path / "last.pt")
    message = str(info.value)
    assert message.startswith(
        f"{tmp_path / 'last.pt'}: its sharded tables in {shard.parent} cannot be read ("
    )
    assert message.endswith("); use an older checkpoint") and "\n" not in message
    assert "CheckpointException" not in message  # the cause DCP wraps, not the wrapper


@pytest.mark.parametrize(
    ("error", "line"),
    [
        (
            OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)),
            "cannot write it: No space left on device; free some space on that disk and run "
            "again (last.pt and the folders it names are kept)",
        ),
        (
            OSError(errno.EROFS, os.strerror(errno.EROFS)),
            "cannot write it: Read-only file system; write to another directory (last.pt and "
            "the folders it names are kept)",
        ),
        (
            ValueError("a bad item"),
            "cannot write it (ValueError: a bad item); last.pt and the folders it names are "
            "kept: once the cause is fixed, resume the run",
        ),
    ],
    ids=["disk-full", "read-only", "other"],
)
def test_a_folder_that_cannot_be_written_is_one_line_and_is_removed(
    tmp_path, monkeypatch, error, line
):
    """ShardedCheckpointer.write in a 1-rank process group, DCP's writer failing after a part
    of a shard reached the disk: one line naming the folder (not DCP's CheckpointException, a
    BaseException), the .tmp folder gone, last.pt and the folder it names untouched."""
    import torch.distributed as dist

    from mtlrec.training.torchrec_checkpoint import ShardedCheckpointer

    checkpoints = tmp_path / "checkpoints"
    payload, _, _ = _payload(checkpoints)
    torch.save(payload, checkpoints / "last.pt")
    before = {p: p.read_bytes() for p in checkpoints.rglob("*") if p.is_file()}

    def failing(writer, plan, planner):
        (Path(writer.path) / "__0_0.distcp").write_bytes(b"part of a shard")
        raise error

    monkeypatch.setattr(dcp.FileSystemWriter, "write_data", failing)
    # an in-process one-rank TorchRec run earlier in the session leaves its group of one rank
    # initialised (ensure_process_group): use it then, else make (and end) one of our own
    own_group = not dist.is_initialized()
    if own_group:
        store = f"file://{tmp_path}/store"
        dist.init_process_group("gloo", init_method=store, rank=0, world_size=1)
    assert dist.get_world_size() == 1
    try:
        with pytest.raises(MtlrecError) as info:
            ShardedCheckpointer(checkpoints, torch.nn.Module(), None, True).write(3, {})
    finally:
        if own_group:
            dist.destroy_process_group()
    temp = info.value.args[0].split(": ")[0]
    assert str(info.value) == f"{temp}: {line}"
    assert Path(temp).parent == checkpoints / "sharded" and temp.endswith(".tmp")
    assert Path(temp).name.startswith("e3-") and not Path(temp).exists()
    assert {p: p.read_bytes() for p in checkpoints.rglob("*") if p.is_file()} == before


@pytest.mark.slow  # 2 spawned ranks (~25 s)
def test_a_two_rank_run_whose_folder_cannot_be_written_fails_in_one_line(tmp_path):
    """Through the CLI, both ranks writing: the one line (no traceback), exit 1, the run failed
    with that line, and no folder, .tmp or last.pt left (fault hook: a read-only sharded/)."""
    import json

    pytest.importorskip("torchrec", reason="needs TorchRec (bash scripts/install_torchrec.sh)")
    from conftest import TINY
    from helpers.cli import env, mtlrec

    run_dir = tmp_path / "run"
    out = mtlrec(
        "train", *TINY, "trainer.epochs=1", "trainer.embedding_backend=torchrec",
        "trainer.embedding_optimizer=adagrad", "trainer.devices=2",
        "trainer.sharding=table_wise", f"hydra.run.dir={run_dir}", cwd=tmp_path,
        env=env(MTLREC_FAULT_READ_ONLY="sharded"),
    )  # fmt: skip
    assert out.returncode == 1 and "Traceback" not in out.stdout + out.stderr
    error = json.loads((run_dir / "metrics.json").read_text())["error"]
    rank, line = error.split(": ", 1)  # the launcher names the rank it reports
    folder = Path(line.split(": ", 1)[0])
    assert rank in ("rank 0 of 2", "rank 1 of 2") and folder.name.endswith(".tmp")
    assert folder.parent == run_dir / "checkpoints" / "sharded"
    assert line == (
        f"{folder}: cannot write it: Read-only file system; write to another directory (last.pt "
        "and the folders it names are kept)"
    )
    assert error in out.stderr and line in out.stdout  # the console's line (train.log's too)
    assert not list(run_dir.rglob("*.tmp")) and not list(run_dir.rglob("last.pt"))
    assert not list(run_dir.rglob("sharded/*"))
