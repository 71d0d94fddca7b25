"""trainer.embedding_backend=torchrec on 2 gloo ranks (CPU): table_wise, column_wise and
data_parallel each train like one process with the same global batch, the plan is saved, a table
over one rank's budget trains when split over the ranks and is refused (one line) when it must sit
on one rank, and `mtlrec evaluate` of a 2-rank run dir gives its test metrics. Checkpoints keep
each rank's shards in a DCP folder (checkpoint.sharded=auto; the table_wise run: gathered into
last.pt): a kill -9 and a SIGTERM resume exactly, a damaged folder is refused.

Every run here starts real processes (2 ranks, each importing TorchRec): slow.
"""

from __future__ import annotations

import csv
import json
import re
import signal

import pytest
import torch

pytest.importorskip("torchrec", reason="needs TorchRec (bash scripts/install_torchrec.sh)")

from conftest import run_training  # noqa: E402

pytestmark = pytest.mark.slow

# adagrad: its state is per element, so a table split into column shards updates exactly as the
# whole table does (rowwise_adagrad keeps one state per row of each shard: a column split changes
# it). One epoch of 2800 rows: 5 steps of 512 (2 ranks x 256), the tail merged into the last.
COMMON = [
    "trainer.embedding_backend=torchrec",
    "trainer.embedding_optimizer=adagrad",
    "trainer.lr=0.01",
    "trainer.epochs=1",
    "trainer.eval_batch_size=256",
]
TWO_RANKS = ["trainer.batch_size=256", "trainer.devices=2"]
BUDGET_MB = 2  # the tiny data's one table (30,809 x 16 floats, 1.9 MB) fits no single rank
SHARDINGS = ("table_wise", "column_wise", "data_parallel")
# data_parallel (the table replicated, its gradient DDP's mean over the ranks, stepped by a torch
# optimizer) trains with sgd at embedding_lr=1: a gradient summed over the ranks instead of
# averaged would double every step at once, where Adagrad's step hardly changes with the
# gradient's scale. Its one-process run is table_wise with the same optimizer.
SETTINGS = {
    "table_wise": [],
    "column_wise": [f"trainer.shard_memory_mb={BUDGET_MB}"],
    "data_parallel": ["trainer.embedding_optimizer=sgd", "trainer.embedding_lr=1"],
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """({sharding: its one-process run}, {sharding: 2-rank run}): run dir and metrics.json."""
    tmp = tmp_path_factory.mktemp("torchrec_ranks")
    one = [*COMMON, "trainer.batch_size=512", "trainer.sharding=table_wise"]
    adagrad = run_training(tmp, one, "single")
    sgd = run_training(tmp, [*one, *SETTINGS["data_parallel"]], "single_sgd")
    single = {"table_wise": adagrad, "column_wise": adagrad, "data_parallel": sgd}
    ranks = {}
    for sharding in SHARDINGS:
        # table_wise: the checkpoint layout of before (full tables in last.pt), which the
        # resumed DCP run below must equal
        layout = ["checkpoint.sharded=gathered"] if sharding == "table_wise" else []
        overrides = [*COMMON, *TWO_RANKS, f"trainer.sharding={sharding}", *SETTINGS[sharding]]
        ranks[sharding] = run_training(tmp, [*overrides, *layout], sharding)
    return single, ranks


def _history(run_dir) -> list[dict[str, str]]:
    return list(csv.DictReader((run_dir / "history.csv").open()))


# Observed after one epoch: losses agree to ~1e-7 relative (the ranks' sums are reduced in
# another order than one process's), so 1e-5 relative is stated; AUCs and calibration are rank /
# bin statistics of the same predictions up to that rounding: 1e-3 absolute.
LOSS_TOLERANCE = 1e-5
RANKED_TOLERANCE = 1e-3


@pytest.mark.parametrize("sharding", SHARDINGS)
def test_two_ranks_train_like_one_process_with_the_same_global_batch(runs, sharding):
    singles, ranks = runs
    (single_dir, single), (run_dir, metrics) = singles[sharding], ranks[sharding]
    assert metrics["status"] == "completed"
    assert (metrics["world_size"], metrics["effective_batch_size"]) == (2, 512)
    assert metrics["metrics"].keys() == single["metrics"].keys()
    ranked = ("auc", "auc_entire", "ece", "ece_entire", "pcoc", "pcoc_entire")
    for key, value in single["metrics"].items():
        if key.endswith(ranked):
            assert metrics["metrics"][key] == pytest.approx(value, abs=RANKED_TOLERANCE), key
        else:
            assert metrics["metrics"][key] == pytest.approx(value, rel=LOSS_TOLERANCE), key
    for a, b in zip(_history(single_dir), _history(run_dir), strict=True):
        for key in ("train/loss", "val/loss"):
            assert float(b[key]) == pytest.approx(float(a[key]), rel=LOSS_TOLERANCE), key


def test_the_plan_is_saved_with_each_rank_s_shards(runs):
    _, ranks = runs
    plans = {
        s: json.loads((ranks[s][0] / "sharding_plan.json").read_text())["tables"]["table_0"]
        for s in SHARDINGS
    }
    assert plans["table_wise"]["sharding_type"] == "table_wise"
    assert len(plans["table_wise"]["ranks"]) == 1  # the whole table on one rank
    column = plans["column_wise"]
    assert column["sharding_type"] == "column_wise" and sorted(column["ranks"]) == [0, 1]
    assert [s["sizes"] for s in column["shards"]] == [[30809, 8], [30809, 8]]  # 16 columns / 2
    replicated = plans["data_parallel"]  # a whole replica on each rank: no shards
    assert replicated["sharding_type"] == "data_parallel" and sorted(replicated["ranks"]) == [0, 1]
    assert (replicated["compute_kernel"], replicated["shards"]) == ("dense", [])


def test_a_table_over_one_rank_s_budget_is_refused_when_it_cannot_be_split(tmp_path, runs):
    """The same budget as the column_wise run (which trained with half the table per rank)."""
    from mtlrec.training.distributed import RankFailed

    overrides = [
        *COMMON,
        *TWO_RANKS,
        "trainer.sharding=table_wise",
        f"trainer.shard_memory_mb={BUDGET_MB}",
    ]
    with pytest.raises(RankFailed) as info:
        run_training(tmp_path, overrides)
    # every rank plans and refuses; the launcher reports the first that did
    assert re.fullmatch(r"rank [01] of 2: (.*)", str(info.value)).group(1) == (
        "trainer.sharding=table_wise: the embedding tables (30,809 x 16) and their "
        "optimizer state do not fit 2 rank(s) of 2 MB memory; raise trainer.devices, "
        "trainer.shard_memory_mb, or let the tables be split (trainer.sharding=auto|column_wise)"
    )
    assert not (tmp_path / "run" / "checkpoints").exists() or not any(
        (tmp_path / "run" / "checkpoints").iterdir()
    )


@pytest.mark.parametrize("sharding", ["column_wise", "data_parallel"])
def test_mtlrec_evaluate_of_a_two_rank_run_gives_its_test_metrics(runs, sharding):
    """best.pt names a DCP folder of each rank's shards (data_parallel: the replicated table,
    written once): `mtlrec evaluate` gathers it into the ordinary layout and rebuilds the native
    model in one process, without TorchRec's layer."""
    from helpers.cli import mtlrec

    _, ranks = runs
    run_dir, metrics = ranks[sharding]
    best = torch.load(run_dir / "checkpoints" / "best.pt", weights_only=True)
    assert not any(".tables." in k for k in best["model_state"])  # in the folder, not best.pt
    folder = run_dir / "checkpoints" / best["sharded_tables"]["folder"]
    files = sorted(p.name for p in folder.iterdir())
    assert files == [".metadata", "__0_0.distcp", "__1_0.distcp"]
    done = mtlrec("evaluate", str(run_dir), "--split", "test", "--json", cwd=run_dir, timeout=300)
    assert done.returncode == 0, done.stderr
    again = json.loads(done.stdout)
    recorded = {k: v for k, v in metrics["metrics"].items() if k.startswith("test/")}
    assert recorded and set(recorded) <= set(again)
    for key, value in recorded.items():
        assert again[key] == pytest.approx(value, rel=1e-6, abs=1e-7), key


def test_a_killed_rank_then_a_sigterm_resume_exactly(tmp_path, runs, monkeypatch):
    """2 ranks, table_wise, shards in DCP folders: rank 1 killed (SIGKILL) at step 3 of the
    epoch's 5, after the step-2 checkpoint; the resume loads each rank's shards and is stopped by
    a SIGTERM to the launcher (forwarded to both ranks) on its first step; the second resume,
    its recorded plan edited to put the table on the other rank (it must build that plan, not
    the planner's; DCP loads the shard there), ends with the uninterrupted 2-rank run's metrics,
    weights, best weights and fused optimizer state (gathered into its last.pt), exactly;
    resumed once more in one process (planned again), it tests the same best weights. Then: only the folders a checkpoint names are left, and a damaged or missing
    file is refused in one line naming it (the resume falls back)."""
    from conftest import TINY, compose_train
    from mtlrec.experiment import run
    from mtlrec.training.checkpoint import load_checkpoint
    from mtlrec.training.distributed import FAULT_ENV, RankFailed
    from mtlrec.training.signals import TrainingInterrupted

    straight_dir, straight = runs[1]["table_wise"]
    run_dir = tmp_path / "run"
    config = [
        *TINY,
        *COMMON,
        *TWO_RANKS,
        "trainer.sharding=table_wise",
        "checkpoint.every_n_steps=2",
    ]
    monkeypatch.setenv(FAULT_ENV, "1:3:kill")
    with pytest.raises(RankFailed):  # rank 1's death, or rank 0's lost connection to it
        run(compose_train(config), run_dir)
    assert json.loads((run_dir / "metrics.json").read_text())["status"] == "failed"
    last = run_dir / "checkpoints" / "last.pt"
    saved = torch.load(last, weights_only=True)
    assert saved["train_state"]["step"] == 2  # mid-epoch
    manifest = saved["sharded_tables"]
    assert sorted(manifest["files"]) == [".metadata", "__0_0.distcp", "__1_0.distcp"]
    assert manifest["model_keys"] == ["embedding.tables.0.weight"]
    assert "embedding.tables.0.weight" not in saved["model_state"]
    assert "fused_tables" not in saved["optimizer_state"]
    resumed = compose_train([*config, f"resume={run_dir}"])
    monkeypatch.setenv(FAULT_ENV, "0:1:term")
    with pytest.raises(TrainingInterrupted) as info:
        run(resumed, run_dir)
    assert info.value.exit_code == 128 + signal.SIGTERM
    monkeypatch.delenv(FAULT_ENV)
    # the recorded plan, its table moved to the other rank: the resume builds that plan (DCP
    # loads the shard there), not the planner's, and still ends exactly
    plan_file = run_dir / "sharding_plan.json"
    plan = json.loads(plan_file.read_text())
    table = plan["tables"]["table_0"]
    (rank,) = table["ranks"]
    table["ranks"], table["shards"][0]["placement"] = [1 - rank], f"rank:{1 - rank}/cpu"
    plan_file.write_text(json.dumps(plan))
    run(resumed, run_dir)
    assert json.loads(plan_file.read_text())["tables"]["table_0"]["ranks"] == [1 - rank]
    got = json.loads((run_dir / "metrics.json").read_text())
    assert got["status"] == "completed"
    assert got["metrics"] == straight["metrics"]  # exact, every val/ and test/ metric
    a = load_checkpoint(last)  # the folder gathered into the ordinary layout
    b = torch.load(straight_dir / "checkpoints" / "last.pt", weights_only=True)
    assert "sharded_tables" not in b  # checkpoint.sharded=gathered: the full tables in last.pt
    for part in ("model_state", "optimizer_state/fused_tables", "train_state/best_state"):
        x, y = a, b
        for key in part.split("/"):
            x, y = x[key], y[key]
        assert y and x.keys() == y.keys(), part
        for k, v in y.items():
            assert torch.equal(x[k], v), (part, k)
    # the finished run resumed in one process (trainer.devices may change at an epoch end): the
    # folder gathered into the ordinary layout and scattered into the one rank's tables; no
    # epoch is left, so the run tests its best weights again: the same test metrics
    one = [o for o in config if o != "trainer.devices=2"]
    assert json.loads(plan_file.read_text())["world_size"] == 2
    run(compose_train([*one, "trainer.devices=1", f"resume={run_dir}"]), run_dir)
    one_rank = json.loads(plan_file.read_text())  # another number of ranks: planned again
    assert (one_rank["world_size"], one_rank["tables"]["table_0"]["ranks"]) == (1, [0])
    again = json.loads((run_dir / "metrics.json").read_text())
    assert (again["status"], again["world_size"]) == ("completed", 1)
    for key, value in straight["metrics"].items():
        assert again["metrics"][key] == pytest.approx(value, rel=1e-6, abs=1e-7), key
    _check_sharded_files(run_dir / "checkpoints", holder=1 - rank)


def _check_sharded_files(checkpoints, holder: int) -> None:
    """The completed run above: last.pt (epoch end) and last.prev.pt (step 4) name one folder
    each, best.pt is last.pt's file, and the folders of the killed and the SIGTERM'd runs'
    checkpoints are gone. A damaged file of last.pt's folder (rank `holder`'s, which holds the
    table): refused naming it, the resume goes on from last.prev.pt; a missing one: refused
    naming it."""
    from mtlrec.errors import MtlrecError
    from mtlrec.training.checkpoint import load_checkpoint, load_resumable

    last, prev = checkpoints / "last.pt", checkpoints / "last.prev.pt"
    manifests = [torch.load(p, weights_only=True)["sharded_tables"] for p in (last, prev)]
    assert manifests[0]["best"]["folder"] == manifests[0]["folder"]  # epoch 1 is the best
    assert (checkpoints / "best.pt").stat().st_ino == last.stat().st_ino  # no second copy
    on_disk = {f"sharded/{p.name}" for p in (checkpoints / "sharded").iterdir()}
    assert on_disk == {m["folder"] for m in manifests}
    shard = checkpoints / manifests[0]["folder"] / f"__{holder}_0.distcp"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(MtlrecError) as info:
        load_checkpoint(last)
    assert str(info.value) == (
        f"{last}: sharded tables file {shard} does not match its SHA-256 in the checkpoint "
        "(corrupt, or from another run); use an older checkpoint"
    )
    assert load_resumable(checkpoints, gather=False)[1] == prev
    gone = checkpoints / manifests[1]["folder"] / ".metadata"
    gone.unlink()
    with pytest.raises(MtlrecError) as info:
        load_checkpoint(prev, gather=False)
    assert str(info.value) == (
        f"{prev}: its sharded tables file {gone} is missing (a checkpoint of sharded tables is "
        "its .pt file plus the folder it names); use an older checkpoint"
    )


def test_a_replicated_table_resumes_exactly_after_a_sigterm(tmp_path, runs, monkeypatch):
    """2 ranks, data_parallel, tables in DCP folders: a SIGTERM to the launcher at step 3 of the
    epoch's 5 (a mid-epoch last.pt), then a resume: it ends with the uninterrupted run's metrics
    and weights, exactly (the replicated table's sgd keeps no state; adagrad's is checked in one
    process, tests/training/test_torchrec_training.py)."""
    from conftest import TINY, compose_train
    from mtlrec.experiment import run
    from mtlrec.training.checkpoint import load_checkpoint
    from mtlrec.training.distributed import FAULT_ENV
    from mtlrec.training.signals import TrainingInterrupted

    straight_dir, straight = runs[1]["data_parallel"]
    run_dir = tmp_path / "run"
    config = [
        *TINY,
        *COMMON,
        *TWO_RANKS,
        "trainer.sharding=data_parallel",
        *SETTINGS["data_parallel"],
    ]
    monkeypatch.setenv(FAULT_ENV, "0:3:term")
    with pytest.raises(TrainingInterrupted):
        run(compose_train(config), run_dir)
    last = run_dir / "checkpoints" / "last.pt"
    assert torch.load(last, weights_only=True)["train_state"]["step"] == 3  # mid-epoch
    monkeypatch.delenv(FAULT_ENV)
    run(compose_train([*config, f"resume={run_dir}"]), run_dir)
    got = json.loads((run_dir / "metrics.json").read_text())
    assert (got["status"], got["metrics"]) == ("completed", straight["metrics"])  # exact
    # both runs' tables in DCP folders (the replica written once), gathered here
    a, b = (load_checkpoint(d / "checkpoints" / "last.pt") for d in (run_dir, straight_dir))
    assert a["model_state"].keys() == b["model_state"].keys()
    for k, v in b["model_state"].items():
        assert torch.equal(a["model_state"][k], v), k
    (state,) = b["optimizer_state"]["replicated_tables"]  # the one table's sgd: its lr, no state
    assert state["state"] == {} and state == a["optimizer_state"]["replicated_tables"][0]


# column_wise on 2 ranks, monitored so that epoch 1 is the best of 2: the highest val loss
BEST_IS_EPOCH_1 = [
    *COMMON,
    *TWO_RANKS,
    "trainer.sharding=column_wise",
    "trainer.monitor=val/loss",
    "trainer.mode=max",
]


def test_the_best_epoch_s_tables_come_back_from_its_folder(tmp_path):
    """2 ranks, column_wise, DCP folders, 2 epochs, monitored so that epoch 1 is the best: the
    best weights keep their tables by reference to epoch 1's folder (best.pt names it, and so
    does last.pt's "best"; that no rank keeps a copy is checked in
    test_torchrec_checkpoint_ranks.py), and the run's test metrics are those of best.pt's
    weights (epoch 1's, gathered in one process by `mtlrec evaluate`), not of last.pt's."""
    from mtlrec.inference.evaluate import evaluate

    run_dir, metrics = run_training(tmp_path, [*BEST_IS_EPOCH_1, "trainer.epochs=2"])
    assert (metrics["status"], metrics["best_epoch"], metrics["epochs_run"]) == ("completed", 1, 2)
    checkpoints = run_dir / "checkpoints"
    best, last = (torch.load(checkpoints / n, weights_only=True) for n in ("best.pt", "last.pt"))
    assert last["sharded_tables"]["best"]["folder"] == best["sharded_tables"]["folder"]
    assert last["sharded_tables"]["folder"] != best["sharded_tables"]["folder"]
    assert not any(".tables." in k for k in last["train_state"]["best_state"])
    at_best, at_last = (evaluate(run_dir, "test", checkpoint=n) for n in ("best.pt", "last.pt"))
    recorded = {k: v for k, v in metrics["metrics"].items() if k.startswith("test/")}
    assert recorded["test/loss"] != pytest.approx(at_last["test/loss"], rel=1e-4)
    for key, value in recorded.items():
        assert at_best[key] == pytest.approx(value, rel=1e-6, abs=1e-7), key


def test_a_resume_keeping_each_task_s_best_puts_back_the_best_epoch_s_shards(tmp_path):
    """trainer.keep_best_per_task on 2 ranks (column_wise, DCP folders), 1 epoch, then resumed
    for a second, monitored so that epoch 1 (before the resume) stays the best: the resume keeps
    the best tables in epoch 1's folder (placeholders), and the end of fit and the per-task
    tests load them from there (was a RuntimeError: "in table files, but none are open"). The
    test metrics are best.pt's, each task's those of its best_<task>.pt (mtlrec evaluate)."""
    from conftest import TINY, compose_train
    from mtlrec.experiment import run
    from mtlrec.inference.evaluate import evaluate

    config = [*BEST_IS_EPOCH_1, "trainer.keep_best_per_task=true"]
    run_dir, _ = run_training(tmp_path, config)
    run(compose_train([*TINY, *config, "trainer.epochs=2", f"resume={run_dir}"]), run_dir)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert (metrics["status"], metrics["best_epoch"], metrics["epochs_run"]) == ("completed", 1, 2)
    expected = {"best.pt": {k: v for k, v in metrics["metrics"].items() if k.startswith("test/")}}
    for task, result in metrics["per_task_best"]["tasks"].items():
        expected[f"best_{task}.pt"] = {
            k: v for k, v in result["metrics"].items() if k.startswith("test/")
        }
    assert len(expected) == 3
    for name, recorded in expected.items():
        at = evaluate(run_dir, "test", checkpoint=name)
        for key, value in recorded.items():
            assert at[key] == pytest.approx(value, rel=1e-6, abs=1e-7), (name, key)
