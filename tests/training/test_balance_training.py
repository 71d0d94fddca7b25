"""Every balancer in a real (tiny) training run: weights in history.csv, state in checkpoints."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch

from mtlrec.errors import MtlrecError
from mtlrec.training.balance import BALANCERS

SMALL_MMOE = ["model=mmoe", "model.num_experts=2", "model.expert_dims=[16]", "model.tower_dims=[8]"]


@pytest.mark.parametrize("balance", sorted(BALANCERS))
def test_each_balancer_trains_mmoe_and_logs_weights(train_tiny, balance):
    run_dir, metrics = train_tiny(
        [*SMALL_MMOE, f"balance={balance}", "trainer.epochs=3", "trainer.patience=null"]
    )
    assert metrics["status"] == "completed"
    assert 0.5 < metrics["metrics"]["test/ctr_auc"] <= 1.0
    h = pd.read_csv(run_dir / "history.csv")
    w = h[["weight/ctr", "weight/cvr"]].to_numpy()
    assert w.shape == (3, 2) and (w > 0).all()
    if balance in ("fixed", "pcgrad"):
        assert (w == 1.0).all()
    if balance == "gradnorm":
        assert all(math.isclose(s, 2.0, rel_tol=1e-5) for s in w.sum(1))  # renormalised to T
        assert not (w == 1.0).all()
    if balance == "dwa":
        assert (w[:2] == 1.0).all()  # the first two epochs have no loss ratio yet
        assert math.isclose(w[2].sum(), 2.0, rel_tol=1e-5) and w[2][0] != w[2][1]
    if balance == "pcgrad":
        assert ((h["pcgrad/conflict_rate"] >= 0) & (h["pcgrad/conflict_rate"] <= 1)).all()
    if balance == "uncertainty":
        ckpt = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=False)
        log_vars = ckpt["train_state"]["balancer"]["log_vars"]
        assert torch.allclose(
            log_vars, torch.tensor(h[["log_var/ctr", "log_var/cvr"]].iloc[-1].tolist())
        )
        # the log-variances are trained by the run's optimizer (their own param group)
        groups = ckpt["optimizer_state"]["optimizers"][0]["param_groups"]  # the dense optimizer
        assert len(groups[-1]["params"]) == 1 and groups[-1]["weight_decay"] == 0.0
        assert math.isclose(
            h["weight/ctr"].iloc[-1], math.exp(-h["log_var/ctr"].iloc[-1]), rel_tol=1e-5
        )


def test_fixed_weights_override_and_single_task_models(train_tiny):
    run_dir, metrics = train_tiny([*SMALL_MMOE, "balance.weights={cvr: 0.25}", "trainer.epochs=1"])
    h = pd.read_csv(run_dir / "history.csv")
    assert h["weight/cvr"].iloc[0] == 0.25 and h["weight/ctr"].iloc[0] == 1.0
    # pcgrad on a model that shares nothing: one line, before the first step
    with pytest.raises(MtlrecError) as err:
        train_tiny(
            ["model=single_task", "model.bottom_dims=[8]", "balance=pcgrad", "trainer.epochs=1"],
            name="st",
        )
    assert str(err.value) == (
        "balance=pcgrad needs parameters shared by the tasks, and this model shares none "
        "(e.g. model=single_task); use balance=fixed, uncertainty or dwa"
    )
    # one task (cvr_base): gradnorm has nothing to balance and trains like fixed
    _, metrics = train_tiny(
        ["model=cvr_base", "model.tower_dims=[8]", "balance=gradnorm", "trainer.epochs=1"],
        name="one",
    )
    assert metrics["status"] == "completed"
    with pytest.raises(MtlrecError, match="balance=gradnorm needs a layer shared by the tasks"):
        train_tiny(
            ["model=single_task", "model.bottom_dims=[8]", "balance=gradnorm", "trainer.epochs=1"],
            name="st2",
        )


@pytest.mark.parametrize(
    ("preset", "model", "dataset", "sweep_keys"),
    [
        (
            "mmoe_synthetic_study",
            "mmoe",
            "mmoe_synthetic",
            {"model", "dataset.correlation", "seed"},
        ),
        ("census_models", "mmoe", "census", {"model", "seed"}),
        ("balance_study", "mmoe", "synthetic_ccp", {"balance", "seed"}),
    ],
)
def test_study_presets_compose(preset, model, dataset, sweep_keys):
    from hydra import compose, initialize_config_module

    with initialize_config_module(config_module="mtlrec.conf", version_base="1.3"):
        cfg = compose(
            config_name="train", overrides=[f"experiment={preset}"], return_hydra_config=True
        )
    assert cfg.model.name == model and cfg.dataset.name == dataset and cfg.balance.name == "fixed"
    assert set(cfg.hydra.sweeper.params) == sweep_keys
    # every swept model accepts the preset's model keys
    if "model" in sweep_keys:
        for name in str(cfg.hydra.sweeper.params.model).split(","):
            with initialize_config_module(config_module="mtlrec.conf", version_base="1.3"):
                c = compose(
                    config_name="train", overrides=[f"experiment={preset}", f"model={name}"]
                )
            from mtlrec.models import model_config

            model_config(dict(c.model))
