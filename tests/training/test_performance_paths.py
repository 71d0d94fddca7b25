"""The hot-path choices of issue 5 keep results right: fused Adam, index_select lookups and
gathers, bf16 autocast, torch.compile wiring, thread settings. (Speed itself is measured in
scripts/bench*.py as ratios, never in tests.)"""

from __future__ import annotations

import json
import logging

import pytest
import torch

from conftest import compose_train
from mtlrec.data.loader import SplitTensors
from mtlrec.data.spec import DatasetSpec, FeatureSpec
from mtlrec.errors import MtlrecError
from mtlrec.models.layers import FeatureEmbedding
from mtlrec.training.trainer import TrainerConfig, gather


def _spec(dims=(None, None, None)) -> DatasetSpec:
    feats = tuple(
        FeatureSpec(f"f{i}", "sparse", v, embedding_dim=d)
        for i, (v, d) in enumerate(zip((5, 7, 3), dims, strict=True))
    )
    return DatasetSpec("t", feats + (FeatureSpec("x", "dense"),), ("y",), ())


@pytest.mark.parametrize("dims", [(None, None, None), (4, None, 4)])
def test_embedding_lookup_matches_nn_embedding_values_and_gradients(dims):
    torch.manual_seed(0)
    spec = _spec(dims)
    emb = FeatureEmbedding(spec, embedding_dim=3)
    ids = torch.stack([torch.randint(0, v, (64,)) for v in (5, 7, 3)], 1)
    ids = ids + torch.tensor(spec.field_offsets)
    dense = torch.randn(64, 1)
    out = emb(ids, dense)
    # The reference: nn.Embedding's own forward on each table.
    parts = []
    for j, table in enumerate(emb.tables):
        local = (
            ids if emb.direct else ids[:, getattr(emb, f"fields_{j}")] + getattr(emb, f"delta_{j}")
        )
        parts.append(table(local).reshape(64, -1))
    ref = torch.cat(parts + [dense], 1)
    assert out.shape == (64, emb.out_dim) and torch.equal(out, ref)
    g = torch.randn_like(out)
    grads = torch.autograd.grad(out, [t.weight for t in emb.tables], g)
    ref_grads = torch.autograd.grad(ref, [t.weight for t in emb.tables], g)
    for a, b in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_gather_equals_advanced_indexing():
    split = SplitTensors(torch.arange(40).view(20, 2), torch.randn(20, 3), torch.rand(20, 2))
    idx = torch.tensor([5, 0, 19, 5])
    b, ref = gather(split, idx, on_device=True), split.take(idx)
    assert torch.equal(b.sparse, ref.sparse) and torch.equal(b.dense, ref.dense)
    assert torch.equal(b.labels, ref.labels)


def test_run_uses_fused_adam_threads_and_logs_them(train_tiny, caplog):
    from mtlrec.training import trainer as trainer_module

    seen = {}
    original = trainer_module.Trainer._make_optimizer

    def spy(self):
        opt = original(self)
        seen["fused"] = opt.defaults.get("fused")
        return opt

    trainer_module.Trainer._make_optimizer = spy
    try:
        with caplog.at_level(logging.INFO, logger="mtlrec"):
            run_dir, metrics = train_tiny(["trainer.epochs=1"])
    finally:
        trainer_module.Trainer._make_optimizer = original
    assert seen["fused"] is True
    env = json.loads((run_dir / "env.json").read_text())
    assert env["torch_num_threads"] == 1 and metrics["num_threads"] == 1
    assert "1 torch thread(s)" in caplog.text


def test_bf16_autocast_runs_matmuls_in_bfloat16_and_trains(train_tiny):
    run_dir, metrics = train_tiny(["trainer.epochs=1", "trainer.precision=bf16"], name="bf16")
    assert metrics["status"] == "completed"
    assert 0.0 < metrics["metrics"]["test/ctr_auc"] < 1.0
    cfg = TrainerConfig(precision="bf16")
    from mtlrec.training.trainer import Trainer

    trainer = Trainer.__new__(Trainer)
    trainer.cfg, trainer.device = cfg, torch.device("cpu")
    with trainer.autocast():
        y = torch.nn.functional.linear(torch.randn(4, 3), torch.randn(2, 3))
    assert y.dtype == torch.bfloat16
    trainer.cfg = TrainerConfig()
    with trainer.autocast():
        assert (
            torch.nn.functional.linear(torch.randn(4, 3), torch.randn(2, 3)).dtype == torch.float32
        )


def test_compile_wraps_the_model_without_changing_checkpoint_keys():
    from mtlrec.data.ccp_generator import dataset_spec
    from mtlrec.models import build_model
    from mtlrec.training.metrics import eval_targets
    from mtlrec.training.trainer import Trainer

    spec = dataset_spec(1000, 0)
    cfg = compose_train(["model=mmoe"])
    model, tasks = build_model(dict(cfg.model), spec, spec.select_tasks(None))
    targets = eval_targets(tasks, model.output_types, spec)
    trainer = Trainer(
        model, spec, tasks, targets, TrainerConfig(compile=True), torch.device("cpu"), 0
    )
    assert trainer.forward is not model and trainer.forward._orig_mod is model
    assert all(not k.startswith("_orig_mod") for k in trainer.model.state_dict())
    plain = Trainer(model, spec, tasks, targets, TrainerConfig(), torch.device("cpu"), 0)
    assert plain.forward is model


@pytest.mark.parametrize(
    "override,message",
    [
        (
            "trainer.precision=fp16",  # fp16 is CUDA-only (GradScaler): refused on the CPU
            "trainer.precision=fp16 needs a CUDA GPU (autocast float16 + GradScaler) but this run "
            "trains on the CPU; use trainer.precision=bf16 or fp32 on the CPU",
        ),
        ("trainer.num_threads=0", "trainer.num_threads must be an integer >= 1 or null, got 0"),
    ],
)
def test_bad_performance_settings_fail_with_one_line(train_tiny, override, message):
    with pytest.raises(MtlrecError) as info:
        train_tiny([override])
    assert str(info.value) == message
