"""trainer.embedding_backend=torchrec in one process: it trains (the loss falls, AUCs above
chance), its checkpoints hold the ordinary layout (mtlrec evaluate without TorchRec gives its test
metrics), its plan is in the run dir, and a run stopped mid-epoch resumes exactly (the fused
optimizer's state is in the checkpoint)."""

from __future__ import annotations

import csv
import json

import pytest
import torch

pytest.importorskip("torchrec", reason="needs TorchRec (bash scripts/install_torchrec.sh)")

from conftest import TINY, compose_train, run_training  # noqa: E402
from helpers.stops import stop_then_resume  # noqa: E402

TORCHREC = ["trainer.embedding_backend=torchrec", "trainer.batch_size=128", "trainer.lr=0.01"]
STEPS_PER_EPOCH = 21  # 2800 train rows / 128, the 112-row tail merged into the last step


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    return run_training(tmp_path_factory.mktemp("torchrec"), TORCHREC)


def test_it_trains_and_records_its_plan(straight):
    run_dir, metrics = straight
    assert metrics["status"] == "completed"
    rows = list(csv.DictReader((run_dir / "history.csv").open()))
    losses = [float(r["train/loss"]) for r in rows]
    assert losses[1] < losses[0]
    for task in ("ctr", "ctcvr"):
        assert metrics["metrics"][f"test/{task}_auc"] > 0.6
    plan = json.loads((run_dir / "sharding_plan.json").read_text())
    assert plan["world_size"] == 1
    table = plan["tables"]["table_0"]
    assert table["compute_kernel"] == "fused" and table["ranks"] == [0]
    state = torch.load(run_dir / "checkpoints" / "best.pt", weights_only=True)
    assert "embedding.tables.0.weight" in state["model_state"]  # the ordinary layout
    assert set(state["optimizer_state"]["fused_tables"]) == {
        "0/collections.0.embeddings.table_0.weight/table_0.momentum1"
    }


def test_evaluate_rebuilds_the_native_model_from_its_checkpoint(straight):
    from mtlrec.inference import evaluate

    run_dir, metrics = straight
    again = evaluate(run_dir, split="test")
    for key, value in metrics["metrics"].items():
        if key.startswith("test/") and key in again:
            assert again[key] == pytest.approx(value, rel=1e-6, abs=1e-7), key


def test_sigterm_mid_epoch_then_resume_is_exact(tmp_path, straight, monkeypatch):
    from mtlrec.experiment import run

    run_dir = tmp_path / "run"
    config, resumed = compose_train([*TINY, *TORCHREC]), [*TINY, *TORCHREC, f"resume={run_dir}"]
    plan_file = run_dir / "sharding_plan.json"

    def as_column_wise():
        """The recorded plan made a one-shard column_wise table (the same layout as the planner's
        table_wise one, so training stays exact): the resume must build that, not plan again."""
        plan = json.loads(plan_file.read_text())
        assert plan["tables"]["table_0"]["sharding_type"] == "table_wise"
        plan["tables"]["table_0"]["sharding_type"] = "column_wise"
        plan_file.write_text(json.dumps(plan))

    stop_then_resume(
        monkeypatch,
        run,
        config,
        compose_train(resumed),
        run_dir,
        k=STEPS_PER_EPOCH + 7,
        before_resume=as_column_wise,
    )
    assert json.loads(plan_file.read_text())["tables"]["table_0"]["sharding_type"] == "column_wise"
    got = json.loads((run_dir / "metrics.json").read_text())
    assert got["status"] == "completed"
    assert got["metrics"] == straight[1]["metrics"]  # exact, every val/ and test/ metric
    a = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    b = torch.load(straight[0] / "checkpoints" / "last.pt", weights_only=True)
    for k, v in b["model_state"].items():
        assert torch.equal(a["model_state"][k], v), k
    for k, v in b["optimizer_state"]["fused_tables"].items():
        assert torch.equal(a["optimizer_state"]["fused_tables"][k], v), k


def test_a_replicated_table_resumes_exactly_with_its_optimizer_state(tmp_path, monkeypatch):
    """data_parallel in one process with adagrad: the replicated table's torch optimizer state
    (its per-element sums) is in the checkpoint and a SIGTERM mid-epoch then resume ends with the
    uninterrupted run's metrics, weights and that state, exactly."""
    from mtlrec.experiment import run

    config = [
        *TINY,
        *TORCHREC,
        "trainer.sharding=data_parallel",
        "trainer.embedding_optimizer=adagrad",
    ]
    straight_dir, straight = run_training(tmp_path, config[len(TINY) :], "straight")
    run_dir = tmp_path / "run"
    resumed = compose_train([*config, f"resume={run_dir}"])
    stop_then_resume(
        monkeypatch, run, compose_train(config), resumed, run_dir, k=STEPS_PER_EPOCH + 7
    )
    got = json.loads((run_dir / "metrics.json").read_text())
    assert got["status"] == "completed"
    assert got["metrics"] == straight["metrics"]
    a = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    b = torch.load(straight_dir / "checkpoints" / "last.pt", weights_only=True)
    for k, v in b["model_state"].items():
        assert torch.equal(a["model_state"][k], v), k
    (want,), (have,) = (
        b["optimizer_state"]["replicated_tables"],
        a["optimizer_state"]["replicated_tables"],
    )
    (sums,) = [s["sum"] for s in want["state"].values()]
    assert sums.shape == (30809, 16) and sums.abs().sum() > 0  # adagrad's state, trained
    assert torch.equal(have["state"][0]["sum"], sums)
    assert have["param_groups"] == want["param_groups"]
