"""The torchrec backend's one-line refusals (docs/errors.md), checked where they are raised."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

from helpers.torchrec import shard_settings
from mtlrec.errors import MtlrecError
from mtlrec.training import torchrec_backend
from mtlrec.training.balance import balance_config
from mtlrec.training.config import TrainerConfig
from mtlrec.training.torchrec_backend import check_settings
from mtlrec.training.torchrec_replicated import CUDA_SHARDED, planner_types

TORCHREC = TrainerConfig(embedding_backend="torchrec")


def line(trainer, device="cpu", balance=None) -> str:
    with pytest.raises(MtlrecError) as info:
        check_settings(trainer, device, balance_config(balance or {"name": "fixed"}))
    return str(info.value)


def test_torchrec_only_keys_need_the_torchrec_backend():
    assert line(TrainerConfig(sharding="table_wise")) == (
        "trainer.sharding=table_wise needs trainer.embedding_backend=torchrec"
    )
    assert line(TrainerConfig(embedding_optimizer="rowwise_adagrad")) == (
        "trainer.embedding_optimizer=rowwise_adagrad needs trainer.embedding_backend=torchrec"
    )
    check_settings(TrainerConfig(), "cpu", balance_config(None))  # the native default passes


def test_optimizers_and_sharding_the_cpu_cannot_run():
    adam = dataclasses.replace(TORCHREC, embedding_optimizer="adam")
    assert line(adam) == (
        "trainer.embedding_optimizer=adam: FBGEMM has no CPU kernel for it; on the CPU use "
        "rowwise_adagrad, adagrad or sgd"
    )
    assert "rowwise_adam" in line(dataclasses.replace(TORCHREC, embedding_optimizer="sparse_adam"))
    assert line(dataclasses.replace(TORCHREC, sharding="row_wise")) == (
        "trainer.sharding=row_wise needs nccl (CUDA GPUs); on the CPU (gloo) use table_wise "
        "or column_wise"
    )
    check_settings(  # replicated tables train on the CPU too (torchrec_replicated)
        dataclasses.replace(TORCHREC, sharding="data_parallel"), "cpu", balance_config(None)
    )


@pytest.mark.parametrize("optimizer", ["adam", "rowwise_adam"])
def test_replicated_tables_have_no_lazy_adam(optimizer):
    """CUDA's Adam kinds: a torch Adam on a replicated table would move every row each step."""
    trainer = dataclasses.replace(TORCHREC, sharding="data_parallel", embedding_optimizer=optimizer)
    assert line(trainer, device="cuda") == (
        "trainer.sharding=data_parallel trains the replicated tables with a torch optimizer, "
        f"which has no counterpart of FBGEMM's {optimizer} (it would move every row); use "
        "rowwise_adagrad, adagrad or sgd, or another trainer.sharding"
    )
    # and with sharding=auto the planner may not replicate a table
    assert planner_types("auto", torch.device("cuda"), optimizer) == CUDA_SHARDED
    assert "data_parallel" not in CUDA_SHARDED


def test_what_auto_lets_the_planner_choose():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert planner_types("auto", cpu, "adagrad") == ["table_wise", "column_wise", "data_parallel"]
    assert planner_types("auto", cuda, "rowwise_adagrad") is None  # every type TorchRec has
    assert planner_types("column_wise", cpu, "sgd") == ["column_wise"]


@pytest.mark.parametrize(
    "change, what",
    [
        ({"embedding_l2": 1e-6}, "trainer.embedding_l2 > 0"),
        ({"ema_decay": 0.99}, "trainer.ema_decay=0.99"),
        ({"compile": True}, "trainer.compile=true"),
        ({"accumulate_batches": 2}, "trainer.accumulate_batches=2"),
    ],
)
def test_what_the_fused_optimizer_cannot_do_is_one_line(change, what):
    assert line(dataclasses.replace(TORCHREC, **change)) == (
        f"{what} does not work with trainer.embedding_backend=torchrec (the fused optimizer "
        "updates the tables inside the backward pass); use the native backend"
    )


def test_fp16_loss_scaling_is_refused():
    """GradScaler unscales the gradients before the optimizer step: FBGEMM steps the tables
    inside the backward, with the scaled ones."""
    assert line(dataclasses.replace(TORCHREC, precision="fp16"), device="cuda") == (
        "trainer.precision=fp16 does not work with trainer.embedding_backend=torchrec (FBGEMM's "
        "fused optimizer would step the tables with GradScaler's scaled gradients); use "
        "trainer.precision=bf16 or fp32"
    )


def test_a_balancer_writing_its_own_gradients_is_refused():
    assert line(TORCHREC, balance={"name": "pcgrad"}).startswith("balance=pcgrad does not work")


def test_torchrec_missing_is_one_line_naming_the_install(monkeypatch):
    monkeypatch.setattr(
        torchrec_backend,
        "torchrec_missing",
        lambda: "ModuleNotFoundError: No module named 'torchrec'",
    )
    assert line(TORCHREC) == (
        "trainer.embedding_backend=torchrec: TorchRec does not import (ModuleNotFoundError: No "
        "module named 'torchrec'); install it with bash scripts/install_torchrec.sh "
        "(docs/distributed.md)"
    )


def _layer(vocab: int, dim: int):
    pytest.importorskip("torchrec", reason="needs TorchRec (bash scripts/install_torchrec.sh)")
    from mtlrec.data.spec import FeatureSpec
    from mtlrec.models.features import FieldEmbedding
    from mtlrec.models.torchrec_embedding import TorchRecFieldEmbedding
    from tests.models.test_features import make_spec

    torchrec_backend.ensure_process_group(torch.device("cpu"))
    native = FieldEmbedding(make_spec([FeatureSpec("item", "sparse", vocab)]), dim)
    return TorchRecFieldEmbedding.from_native(copy.deepcopy(native))


def test_a_width_fbgemm_cannot_hold_is_one_line():
    with pytest.raises(MtlrecError) as info:
        torchrec_backend.shard_layer(_layer(10, 6), shard_settings(), torch.device("cpu"))
    assert str(info.value) == (
        "trainer.embedding_backend=torchrec: FBGEMM's tables need a width that is a multiple of "
        "4, got 6 (model.embedding_dim x copies); set model.embedding_dim to a multiple of 4"
    )


@pytest.mark.parametrize(
    "sharding, refusal",
    [
        (
            "table_wise",
            "do not fit 1 rank(s) of 1 MB memory; raise trainer.devices, trainer.shard_memory_mb, "
            "or let the tables be split (trainer.sharding=auto|column_wise)",
        ),
        (  # more ranks would not help: each holds a whole replica
            "data_parallel",
            "do not fit one rank's 1 MB memory (every rank holds a whole replica); raise "
            "trainer.shard_memory_mb or shard the tables "
            "(trainer.sharding=auto|table_wise|column_wise)",
        ),
    ],
)
def test_tables_over_the_rank_budget_are_refused_in_one_line(sharding, refusal):
    with pytest.raises(MtlrecError) as info:
        torchrec_backend.shard_layer(
            _layer(300_000, 4),
            shard_settings(sharding=sharding, shard_memory_mb=1),
            torch.device("cpu"),
        )
    assert str(info.value) == (
        f"trainer.sharding={sharding}: the embedding tables (300,000 x 4) and their optimizer "
        f"state {refusal}"
    )


def test_ci_installs_torchrec_so_its_tests_run():
    """.ci/run sets MTLREC_REQUIRE_TORCHREC=1 after scripts/install_torchrec.sh: there, the
    TorchRec tests must run, never skip."""
    import os

    if os.environ.get("MTLREC_REQUIRE_TORCHREC") != "1":
        pytest.skip("only where MTLREC_REQUIRE_TORCHREC=1 (.ci/run)")
    assert torchrec_backend.torchrec_missing() is None
