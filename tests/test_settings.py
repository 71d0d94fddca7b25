"""Typed run settings: a wrong config value is one line naming key, value and what is allowed,
exit 1, and no run dir, before Hydra writes anything (mtlrec.settings.SettingsCheck)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import compose_train
from mtlrec.errors import MtlrecError
from mtlrec.settings import RunSettings, TrainerConfig

CASES = [
    ("trainer.grad_clip_norm=abc", "trainer.grad_clip_norm='abc': expected a number or null"),
    ("dataset.num_rows=abc", "dataset.num_rows='abc': expected an integer"),
    ("seed=abc", "seed='abc': expected an integer"),
    ("model=mmoe model.expert_dims=64", "model.expert_dims=64: expected a list of integers"),
    ("model.batch_norm=abc", "model.batch_norm='abc': expected true or false"),
    (
        "trainer.monitor=val/foo",
        "trainer.monitor='val/foo': not a validation metric; expected auto or val/<task>_<metric> "
        "(e.g. val/ctr_auc, val/mean_auc, val/loss) with <metric> one of auc, gauc, logloss, pcoc, "
        "ece, mse, rmse, mae, loss",
    ),
    ("trainer.tail_batch=last", "trainer.tail_batch='last': expected one of merge, drop, keep"),
    ("dataset.num_rows=0", "dataset.num_rows must be an integer >= 1, got 0"),
    ("streaming.enabled=yes", "streaming.enabled='yes': expected true or false"),
    (
        "streaming=enabled streaming.shuffle_buffer=0",
        "streaming.shuffle_buffer must be an integer >= 1, got 0",
    ),
    (
        "trainer.embedding_optimizer=lamb",
        "trainer.embedding_optimizer='lamb': expected one of auto, adam, sparse_adam, adagrad, "
        "rowwise_adagrad, sgd, rowwise_adam",
    ),
    (
        "trainer.embedding_optimizer=sgd",  # FBGEMM's, for the torchrec backend only
        "trainer.embedding_optimizer=sgd needs trainer.embedding_backend=torchrec",
    ),
    (
        "trainer.data_on_device=maybe",
        "trainer.data_on_device='maybe': expected one of auto, true, false",
    ),
]


NOT_PRODUCED = (
    "model=cvr_base trainer.monitor=val/ctr_auc",
    "trainer.monitor='val/ctr_auc': this run produces no such validation metric; choose one of "
    "['val/cvr_auc', 'val/cvr_auc_entire', 'val/cvr_ece', 'val/cvr_ece_entire', "
    "'val/cvr_logloss', 'val/cvr_logloss_entire', 'val/cvr_loss', 'val/cvr_pcoc', "
    "'val/cvr_pcoc_entire', 'val/loss', 'val/mean_auc', 'val/mean_logloss']",
)


@pytest.mark.parametrize(
    "override, message", [*CASES, NOT_PRODUCED], ids=[c[0] for c in [*CASES, NOT_PRODUCED]]
)
def test_bad_setting_is_one_line_exit_1_and_no_run_dir(tmp_path, override, message):
    run_dir = tmp_path / "outputs" / "run"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "mtlrec",
            "train",
            *override.split(),
            "device=cpu",
            f"hydra.run.dir={run_dir}",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=300,
    )
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.strip().splitlines() == [f"mtlrec train: error: {message}"]
    assert "Traceback" not in proc.stdout
    assert not run_dir.exists() and not (tmp_path / "outputs").exists()


@pytest.mark.parametrize("override, message", CASES, ids=[c[0] for c in CASES])
def test_run_settings_raise_the_same_line_in_process(override, message):
    with pytest.raises(MtlrecError) as info:
        RunSettings.from_config(compose_train(override.split()))
    assert str(info.value) == message


def test_a_monitor_the_model_does_not_produce_is_found_from_the_spec_alone():
    """cvr_base predicts cvr only: checked from synthetic_ccp's spec and a meta-device model,
    before any data is generated or loaded."""
    from mtlrec.settings import check_monitor_produced

    override, message = NOT_PRODUCED
    settings = RunSettings.from_config(compose_train(override.split()))
    with pytest.raises(MtlrecError) as info:
        check_monitor_produced(settings)
    assert str(info.value) == message
    check_monitor_produced(RunSettings.from_config(compose_train(["trainer.monitor=val/ctr_auc"])))


def test_the_pre_check_reads_the_generator_options_of_synthetic_ccp():
    """model=esm2 on synthetic_ccp with its D-action stage switched on by an option (not the
    preset) has a funnel.action: the spec the pre-check builds must carry the option's stage."""
    from mtlrec.settings import check_monitor_produced

    base = ["model=esm2", "trainer.monitor=val/ctavr_auc", "dataset.path=/nonexistent/ccp"]
    check_monitor_produced(
        RunSettings.from_config(compose_train([*base, "dataset.action_rate=0.3"]))
    )
    with pytest.raises(MtlrecError, match="declares no funnel.action"):
        check_monitor_produced(RunSettings.from_config(compose_train(base)))


def test_settings_of_the_default_config_are_typed():
    settings = RunSettings.from_config(compose_train(["seed=7", "checkpoint.every_n_steps=5"]))
    assert settings.seed == 7 and settings.data_order_seed == 7
    assert isinstance(settings.trainer, TrainerConfig) and settings.trainer.tail_batch == "merge"
    assert settings.checkpoint.every_n_steps == 5 and settings.device.type == "auto"
    assert settings.model.name == "esmm" and settings.model.config.batch_norm is False
    assert settings.balance.name == "fixed" and settings.balance.config.weights is None
    assert settings.resume is None and "hydra" not in settings.config
