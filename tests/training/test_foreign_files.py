"""Foreign files where mtlrec expects its own, sizes that cannot be allocated, the run-dir lock
without its file: each one line (an MtlrecError), nothing executed, nothing allocated."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import warnings

import pytest
import torch

from conftest import compose_train
from mtlrec.errors import MtlrecError
from mtlrec.runs.lock import DirInUse, claim, owner_pid
from mtlrec.runs.records import LOCK_FILE
from mtlrec.training.checkpoint import load_checkpoint


class Runs:
    """Unpickling this runs code: no loader may ever do it."""

    def __reduce__(self):
        return (os.system, ("touch RAN",))


@pytest.mark.parametrize(
    ("content", "cause"),
    [(b"hello\n" * 50, "KeyError"), (pickle.dumps({"format": 1}, protocol=4), "UnpicklingError")],
)
def test_a_foreign_file_as_a_checkpoint_is_one_line_without_torch_warnings(
    tmp_path, content, cause
):
    path = tmp_path / "best.pt"
    path.write_bytes(content)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a torch UserWarning would fail here
        with pytest.raises(MtlrecError) as info:
            load_checkpoint(path)
    assert str(info.value) == (
        f"{path}: checkpoint is truncated or corrupt ({cause}); use an older checkpoint"
    )


def test_a_pickle_that_runs_code_is_refused_without_running_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "best.pt").write_bytes(pickle.dumps(Runs()))
    with pytest.raises(MtlrecError, match="truncated or corrupt"):
        load_checkpoint(tmp_path / "best.pt")
    assert not (tmp_path / "RAN").exists()


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_a_torchscript_archive_is_never_handed_to_torch_jit_load(tmp_path, monkeypatch):
    module = torch.jit.script(torch.nn.Linear(2, 1))
    torch.jit.save(module, str(tmp_path / "best.pt"))
    monkeypatch.setattr(torch.jit, "load", lambda *a, **k: pytest.fail("torch.jit.load ran"))
    with pytest.raises(MtlrecError) as info:
        load_checkpoint(tmp_path / "best.pt")
    assert str(info.value) == (
        f"{tmp_path / 'best.pt'}: is a TorchScript model (an export), not an mtlrec checkpoint"
    )


@pytest.mark.parametrize(("fmt", "name"), [("torchscript", "model.pt"), ("onnx", "model.onnx")])
def test_an_export_whose_model_is_a_pickle_with_a_matching_sha_is_one_line(
    tmp_path, monkeypatch, fmt, name
):
    if fmt == "onnx":
        pytest.importorskip("onnxruntime")
    from mtlrec.inference.export_files import verify_and_score

    monkeypatch.chdir(tmp_path)
    data = pickle.dumps(Runs())
    (tmp_path / name).write_bytes(data)
    files = {name: hashlib.sha256(data).hexdigest()}
    info = {"format": fmt, "model_file": name, "files": files}
    (tmp_path / "export.json").write_text(json.dumps(info))
    with pytest.raises(MtlrecError) as err:
        verify_and_score(tmp_path)
    kind = "TorchScript" if fmt == "torchscript" else "ONNX"
    assert str(err.value).startswith(f"{tmp_path / name}: not a loadable {kind} model (")
    assert str(err.value).endswith("matches export.json (both were replaced?); export again")
    assert "\n" not in str(err.value) and not (tmp_path / "RAN").exists()


# -- sizes ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "overrides",
    [
        ["model.embedding_dim=1000000000"],
        ["model=mmoe", "model.num_experts=1000000"],
        ["model=mmoe", "model.tower_dims=[100000,100000]"],
        ["dataset.num_rows=1000000000000"],
    ],
)
def test_sizes_that_cannot_be_allocated_are_refused_with_the_numbers(overrides, monkeypatch):
    from mtlrec import settings as settings_module
    from mtlrec.training import optimizers

    monkeypatch.setattr(optimizers, "free_memory", lambda device: 64 * 2**30)
    settings = settings_module.RunSettings.from_config(compose_train(overrides + ["device=cpu"]))
    spec, rows = settings_module.spec_at_hand(settings)
    with pytest.raises(MtlrecError) as info:
        settings_module.check_memory(settings, spec, rows)
    line = str(info.value)
    assert line.startswith(f"the run (model {settings.model_name}) needs at least ")
    assert "but 64.00 GiB are free on cpu; make it smaller" in line


def test_the_estimate_counts_parameters_and_adam_state_exactly():
    from mtlrec.data.ccp_generator import dataset_spec
    from mtlrec.models import build_model
    from mtlrec.training.memory import model_footprint

    spec = dataset_spec(1000, 0)
    cfg = {"name": "mmoe", "num_experts": 3, "expert_dims": [8], "tower_dims": [4]}
    need = model_footprint(cfg, spec, spec.tasks, "adam")
    model, _ = build_model(cfg, spec, spec.tasks)
    tables = sum(t.weight.numel() for t in model.modules() if isinstance(t, torch.nn.Embedding))
    total = sum(p.numel() for p in model.parameters())
    assert need.parameters == 4 * total
    assert need.optimizer == 4 * (2 * tables + 3 * (total - tables))


def test_tables_sharded_over_ranks_are_left_out_of_the_estimate(monkeypatch):
    """trainer.embedding_backend=torchrec on 2 GPU ranks (not data_parallel): no rank holds the
    tables whole and TorchRec's planner checks each rank's part, so the start's estimate leaves
    them out: a run whose tables exceed one GPU trains sharded, and is refused on one rank. On
    the CPU all ranks' shards share the host's memory: the whole tables are counted there."""
    from types import SimpleNamespace

    from mtlrec import settings as settings_module
    from mtlrec.data.ccp_generator import dataset_spec
    from mtlrec.models import build_model
    from mtlrec.training import optimizers
    from mtlrec.training.memory import model_footprint, row_bytes, tables_split_over_ranks

    spec = dataset_spec(1000, 0)
    cfg = {"name": "mmoe", "num_experts": 3, "expert_dims": [8], "tower_dims": [4]}
    model, _ = build_model(cfg, spec, spec.tasks)
    tables = sum(t.weight.numel() for t in model.modules() if isinstance(t, torch.nn.Embedding))
    dense = sum(p.numel() for p in model.parameters()) - tables
    split = model_footprint(cfg, spec, spec.tasks, "adam", tables_sharded=True)
    assert (split.parameters, split.optimizer) == (4 * dense, 4 * 3 * dense)
    trainer = SimpleNamespace(embedding_backend="torchrec", sharding="column_wise")
    gpu, cpu = torch.device("cuda", 0), torch.device("cpu")
    assert tables_split_over_ranks(trainer, 2, gpu) and not tables_split_over_ranks(trainer, 1, gpu)
    assert not tables_split_over_ranks(trainer, 2, cpu)  # one host's memory holds every shard
    for changed in ({"sharding": "data_parallel"}, {"embedding_backend": "native"}):
        other = SimpleNamespace(**{**vars(trainer), **changed})
        assert not tables_split_over_ranks(other, 2, gpu)
    torchrec = ["device=cuda", "trainer.embedding_backend=torchrec", "trainer.sharding=column_wise"]
    settings = settings_module.RunSettings.from_config(
        compose_train([*torchrec, "trainer.devices=2"])
    )
    spec, rows = settings_module.spec_at_hand(settings)
    tasks = spec.select_tasks(settings.dataset.task_selection)
    whole = model_footprint(settings.model, spec, tasks, settings.trainer.embedding_optimizer)
    without = model_footprint(settings.model, spec, tasks, "auto", tables_sharded=True)
    assert whole.total > without.total + 2**20  # the tables: over 1 MiB of it
    data = (rows or 0) * row_bytes(spec)  # the generated rows, counted either way
    free = (whole.total + without.total) // 2 + data  # the tables do not fit it
    monkeypatch.setattr(optimizers, "free_memory", lambda device: free)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # two GPUs, checked only
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    settings_module.check_memory(settings, spec, rows)
    one = settings_module.RunSettings.from_config(compose_train([*torchrec, "trainer.devices=1"]))
    with pytest.raises(MtlrecError, match="are free on cuda:0; make it smaller"):
        settings_module.check_memory(one, spec, rows)
    on_cpu = ["device=cpu", *torchrec[1:], "trainer.devices=2"]
    host = settings_module.RunSettings.from_config(compose_train(on_cpu))
    with pytest.raises(MtlrecError, match="are free on cpu; make it smaller"):
        settings_module.check_memory(host, spec, rows)  # 2 CPU ranks: the host holds it all


def test_a_reasonable_run_passes_the_memory_check():
    from mtlrec import settings as settings_module

    settings = settings_module.RunSettings.from_config(compose_train(["device=cpu"]))
    settings_module.check_memory(settings, *settings_module.spec_at_hand(settings))


# -- the lock without its file -------------------------------------------------------------------
def test_a_dir_whose_lock_file_was_deleted_is_still_owned(tmp_path):
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent(
        """
        import sys
        from mtlrec.runs.lock import claim
        claim(sys.argv[1])
        print("held", flush=True)
        sys.stdin.read()
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(tmp_path / "run")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout.readline() == "held\n"
        (tmp_path / "run" / LOCK_FILE).unlink()
        with pytest.raises(DirInUse) as info:
            claim(tmp_path / "run", "pick another dir")
        assert str(info.value) == (
            f"{tmp_path / 'run'}: in use by another mtlrec process "
            f"({tmp_path / 'run' / LOCK_FILE}); pick another dir"
        )
        assert owner_pid(tmp_path / "run") == 0
        assert not (tmp_path / "run" / LOCK_FILE).exists()  # the refused claim made none
    finally:
        proc.stdin.close()
        assert proc.wait(timeout=30) == 0
    claim(tmp_path / "run").release()  # free once the owner ended
