"""Every new config name of model zoo II trains through experiment.run, under PCGrad where it shares
parameters, and resumes exactly after an interruption."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
import torch

from conftest import TINY, compose_train, run_training
from helpers.stops import stop_then_resume

# config name -> (overrides, shares parameters between tasks)
CONFIGS = {
    "division": (["model=division"], False),
    "esmm_ns": (["model=esmm", "model.share_embedding=false"], True),
    "mmoe_attention": (["model=mmoe", "model.gate=attention"], True),
    "esmm_deepfm": (["model=esmm", "model.backbone=deepfm"], True),
    "esmm_dcn": (["model=esmm", "model.backbone=dcn", "model.cross_layers=1"], True),
    "shared_bottom_dcn": (["model=shared_bottom", "model.backbone=dcn"], True),
    "mmoe_dcn": (["model=mmoe", "model.backbone=dcn"], True),
    "mmoe_deepfm": (["model=mmoe", "model.backbone=deepfm"], True),
    "single_task_deepfm": (["model=single_task", "model.backbone=deepfm"], False),
    "single_task_dcn": (["model=single_task", "model.backbone=dcn"], False),
    "escm2_ips": (["model=escm2", "model.regularizer=ips"], True),
    "escm2_dr": (["model=escm2", "model.regularizer=dr"], True),
    "snr_trans": (["model=snr", "model.connection=trans"], True),
    "snr_aver": (["model=snr", "model.connection=aver"], True),
}
SMALL = ["trainer.epochs=1", "model.embedding_dim=4"]


@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_new_config_names_train(tmp_path, config):
    overrides, shares = CONFIGS[config]
    balance = ["balance=pcgrad"] if shares else []
    run_dir, metrics = run_training(tmp_path, [*overrides, *SMALL, *balance])
    assert metrics["status"] == "completed" and metrics["epochs_run"] == 1
    m = metrics["metrics"]
    assert 0.0 <= m["test/ctr_auc"] <= 1.0 and 0.0 < m["test/ctr_logloss"] < 2.0
    h = pd.read_csv(run_dir / "history.csv")
    if shares:
        assert 0.0 <= h["pcgrad/conflict_rate"].iloc[0] <= 1.0
    if config.startswith(("division", "esmm", "escm2")):  # the ESMM paper's CVR metrics
        assert 0.0 <= m["test/cvr_auc_entire"] <= 1.0 and "test/ctcvr_auc" in m
    if config.startswith(("escm2", "snr")):  # the regularizer / L0 penalty is logged
        assert h["train/extra_loss"].iloc[0] > 0
    if config.startswith(("snr", "mmoe")):  # codes / gates logged like MoE gates
        gates = h.filter(like="gate/ctr/expert_")
        assert gates.shape[1] == (2 if config.startswith("snr") else 8)  # snr: upper subnetworks
        assert ((gates >= 0) & (gates <= 1)).all().all()
        if config.startswith("mmoe"):
            assert math.isclose(gates.iloc[0].sum(), 1.0, rel_tol=1e-5)


@pytest.mark.parametrize("config", ["snr_trans", "escm2_dr", "division"])
def test_interrupted_and_resumed_equals_uninterrupted(tmp_path, monkeypatch, config):
    """SNR samples codes from the RNG each step, ESCM²-DR has an extra tower: both resume exactly."""
    from mtlrec.experiment import run

    overrides = [*TINY, *CONFIGS[config][0], "model.embedding_dim=4", "trainer.batch_size=128"]
    straight_dir, straight = run_training(tmp_path, overrides[len(TINY) :], name="straight")
    # polls: one per step plus one after each epoch: poll 30 is epoch 2 step 8 (21 steps an
    # epoch: 2,800 rows at 128, the short tail merged into the step before)
    run_dir = tmp_path / "resumed"
    resumed = compose_train([*overrides, f"resume={run_dir}"])
    stop = stop_then_resume(monkeypatch, run, compose_train(overrides), resumed, run_dir, k=30)
    assert "training stopped after epoch 2 step 8/21" in str(stop)
    got = json.loads((run_dir / "metrics.json").read_text())
    assert got["status"] == "completed" and "resumed_at" in got
    assert got["metrics"] == straight["metrics"]  # exact float equality of every metric
    a = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=False)["model_state"]
    b = torch.load(straight_dir / "checkpoints" / "last.pt", weights_only=False)["model_state"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize(
    "config", ["division", "snr_aver", "escm2_dr", "mmoe_attention", "esmm_dcn"]
)
def test_new_models_export_to_torchscript(tmp_path, config):
    from mtlrec.inference import export

    run_dir, _ = run_training(tmp_path, [*CONFIGS[config][0], *SMALL])
    result = export(run_dir, "torchscript", tmp_path / "ts", sample_rows=64)
    assert result["max_abs_diff"] <= 1e-5
    assert "cvr_clamped" not in result["outputs"] and "gates" not in result["outputs"]


@pytest.mark.parametrize("config", sorted(c for c, (_, shares) in CONFIGS.items() if shares))
def test_new_shared_models_train_under_gradnorm(tmp_path, config):
    """GradNorm needs a last shared layer: every new model that shares parameters has one."""
    run_dir, metrics = run_training(tmp_path, [*CONFIGS[config][0], *SMALL, "balance=gradnorm"])
    assert metrics["status"] == "completed"
    weights = pd.read_csv(run_dir / "history.csv").filter(like="weight/")
    assert weights.shape[1] == 2  # renormalised to sum to the number of tasks
    assert math.isclose(weights.iloc[0].sum(), 2.0, rel_tol=1e-4)
