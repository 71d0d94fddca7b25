"""How ranking teams train (docs/training.md): lr schedules with warm-up, gradient accumulation,
fp16's GradScaler path, weight EMA."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys

import pytest
import torch

from conftest import compose_train
from mtlrec.data.ccp_generator import dataset_spec
from mtlrec.data.loader import Batch
from mtlrec.errors import MtlrecError
from mtlrec.models import build_model
from mtlrec.settings import RunSettings, TrainerConfig
from mtlrec.training.metrics import eval_targets
from mtlrec.training.optim_step import OptimizerStep
from mtlrec.training.trainer import Trainer


def history(run_dir):
    with open(run_dir / "history.csv") as f:
        return list(csv.DictReader(f))


def toy_trainer(model_name: str, cfg: TrainerConfig, seed: int = 0, balance=None):
    spec = dataset_spec(1000, 0)
    torch.manual_seed(seed)
    model_cfg = dict(compose_train([f"model={model_name}"]).model)
    model, tasks = build_model(model_cfg, spec, spec.select_tasks(None))
    targets = eval_targets(tasks, model.output_types, spec)
    trainer = Trainer(model, spec, tasks, targets, cfg, torch.device("cpu"), 0, balance=balance)
    return spec, trainer


def toy_batch(spec, n: int, seed: int) -> Batch:
    g = torch.Generator().manual_seed(seed)
    cols = [
        torch.randint(0, f.vocab_size, (n,), generator=g) + offset
        for f, offset in zip(spec.sparse, spec.field_offsets, strict=True)
    ]
    click = (torch.rand(n, generator=g) < 0.4).float()
    conv = click * (torch.rand(n, generator=g) < 0.5).float()
    labels = torch.stack([click, conv, *[conv] * (len(spec.labels) - 2)], 1)
    return Batch(torch.stack(cols, 1), torch.randn(n, len(spec.dense), generator=g), labels)


def concat(*batches: Batch) -> Batch:
    return Batch(
        *(torch.cat([getattr(b, k) for b in batches]) for k in ("sparse", "dense", "labels"))
    )


# -- lr schedules ---------------------------------------------------------------------------------
def test_cosine_with_warmup_logs_the_scheduled_lr_per_epoch_and_per_step(train_tiny, monkeypatch):
    """2800 train rows / 256 = 10 steps per epoch (tail merged), 2 epochs: warm-up 4 steps, then
    a cosine over the 16 others down to 0. history.csv holds the lr after each epoch's last
    step, the logger every step's lr."""
    from mtlrec.loggers.base import RunLogger

    steps: list[tuple[int, float]] = []
    monkeypatch.setattr(RunLogger, "log_step", lambda self, s, v: steps.append((s, v["lr"])))
    lr = 0.01
    run_dir, metrics = train_tiny(
        [
            f"trainer.lr={lr}",
            "trainer.lr_schedule=cosine",
            "trainer.warmup_steps=4",
            "trainer.patience=null",
            "trainer.log_every_n_steps=1",
        ]
    )
    assert metrics["status"] == "completed"
    rows = history(run_dir)
    cosine_at = lambda t: lr * (1 + math.cos(math.pi * t / 16)) / 2  # noqa: E731
    assert float(rows[0]["lr"]) == pytest.approx(cosine_at(10 - 4), rel=1e-9)
    assert float(rows[1]["lr"]) == pytest.approx(0.0, abs=1e-12)
    assert [s for s, _ in steps] == list(range(1, 21))  # trainer.log_every_n_steps=1
    # warm-up: lr/4 at the first step, rising by (1 - 1/4)/4 of lr per step, lr at step 4
    assert [v for _, v in steps[:4]] == pytest.approx(
        [lr * (0.25 + 0.1875 * k) for k in (1, 2, 3, 4)]
    )
    assert steps[9][1] == pytest.approx(cosine_at(6))


@pytest.mark.parametrize(
    "name, expected",  # the lr after 10 optimizer steps, lr = 1
    [
        ("constant", 1.0),
        ("step", 0.5**2),  # lr_step_size=4, lr_gamma=0.5: decayed at steps 4 and 8
        ("exponential", 0.5**10),
        ("linear", 1 - 0.9 * 10 / 20),  # to lr_min_factor=0.1 over 20 steps
        ("cosine", 0.1 + 0.9 * (1 + math.cos(math.pi * 10 / 20)) / 2),
    ],
)
def test_each_schedule_follows_torch_lr_scheduler(name, expected):
    from mtlrec.training.schedule import run_schedule

    cfg = TrainerConfig(lr=1.0, lr_schedule=name, lr_step_size=4, lr_min_factor=0.1)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    schedule = run_schedule([opt], cfg, 20, "max")
    for k in range(1, 11):
        opt.step()
        schedule.after_step(k)
    assert opt.param_groups[0]["lr"] == pytest.approx(expected, rel=1e-9)


def test_plateau_lowers_the_lr_per_epoch_on_the_monitored_metric():
    from mtlrec.training.schedule import run_schedule

    cfg = TrainerConfig(lr=1.0, lr_schedule="plateau", lr_gamma=0.1, lr_plateau_patience=1)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    schedule = run_schedule([opt], cfg, 100, "max")
    for k in range(1, 6):
        schedule.after_step(k)  # per-step calls leave plateau alone
    lrs = []
    for auc in (0.70, 0.71, 0.71, 0.71):
        schedule.after_epoch(auc)
        lrs.append(opt.param_groups[0]["lr"])
    assert lrs == pytest.approx([1.0, 1.0, 1.0, 0.1])  # two epochs without improvement


def test_embedding_tables_get_their_own_lr_and_schedule_when_configured():
    cfg = TrainerConfig(
        lr=0.01,
        embedding_lr=0.1,
        lr_schedule="constant",
        embedding_lr_schedule="exponential",
        lr_gamma=0.5,
        embedding_optimizer="sparse_adam",
    )
    spec, trainer = toy_trainer("mmoe", cfg)
    from mtlrec.training.schedule import run_schedule

    trainer.stepper.schedule = run_schedule(trainer.optimizer.optimizers, cfg, 10, "max")
    for s in range(3):
        trainer.step(toy_batch(spec, 64, s))
    dense, rows = trainer.optimizer.optimizers
    assert dense.param_groups[0]["lr"] == 0.01
    assert rows.param_groups[0]["lr"] == pytest.approx(0.1 * 0.5**3)


@pytest.mark.parametrize(
    "override, line",
    [
        ("trainer.lr_schedule=cosin", "trainer.lr_schedule='cosin' is unknown; use one of"),
        ("trainer.warmup_steps=-1", "trainer.warmup_steps must be an integer >= 0, got -1"),
        ("trainer.lr_gamma=1.5", "trainer.lr_gamma must be in (0, 1), got 1.5"),
        ("trainer.accumulate_batches=0", "trainer.accumulate_batches must be an integer >= 1"),
        ("trainer.ema_decay=1", "trainer.ema_decay must be in (0, 1) or null, got 1"),
        (
            "trainer.precision=fp16",
            "trainer.precision=fp16 needs a CUDA GPU (autocast float16 + GradScaler) but this run "
            "trains on the CPU; use trainer.precision=bf16 or fp32 on the CPU",
        ),
    ],
)
def test_bad_training_practice_settings_are_one_line_before_any_run_dir(tmp_path, override, line):
    run_dir = tmp_path / "run"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "mtlrec",
            "train",
            override,
            "device=cpu",
            f"hydra.run.dir={run_dir}",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1
    err = done.stderr.strip()
    assert len(err.splitlines()) == 1 and line in err, err
    assert not run_dir.exists()


# -- gradient accumulation ----------------------------------------------------------------------
@pytest.mark.parametrize("embedding_optimizer", ["adam", "sparse_adam", "adagrad"])
def test_accumulated_batches_equal_one_step_on_the_concatenated_batch(embedding_optimizer):
    """ESMM (ctr, ctcvr) and the CVR-on-clicks baseline (a task over clicked rows only, whose
    row counts differ between the batches): N batches accumulated == one batch of all rows."""
    for model in ("esmm", "cvr_base"):
        common = dict(lr=1e-2, grad_clip_norm=0.5, embedding_optimizer=embedding_optimizer)
        spec, accumulated = toy_trainer(model, TrainerConfig(accumulate_batches=3, **common))
        _, single = toy_trainer(model, TrainerConfig(**common))
        batches = [toy_batch(spec, n, seed) for n, seed in ((64, 1), (40, 2), (64, 3))]
        for i, batch in enumerate(batches):
            accumulated.step(batch, apply=i == 2)
        single.step(concat(*batches))
        assert accumulated.global_step == single.global_step == 1
        accumulated.optimizer.flush()
        single.optimizer.flush()
        for (name, a), b in zip(
            accumulated.model.state_dict().items(), single.model.state_dict().values(), strict=True
        ):
            assert torch.allclose(a, b, atol=1e-6, rtol=1e-5), (model, name)
            # and the step moved them: not a trivially equal pair
        first = next(iter(single.model.state_dict().values()))
        assert not torch.equal(
            first,
            toy_trainer(model, TrainerConfig(**common))[1].model.state_dict()[
                next(iter(single.model.state_dict()))
            ],
        )


def test_accumulation_counts_optimizer_steps_and_logs_the_effective_batch(train_tiny):
    """10 batches per epoch, accumulate_batches=4: steps after batches 4, 8 and 10 (the epoch's
    last batch closes its group): 3 optimizer steps per epoch."""
    run_dir, metrics = train_tiny(
        ["trainer.accumulate_batches=4", "trainer.lr_schedule=linear", "trainer.epochs=1"]
    )
    assert metrics["status"] == "completed"
    assert metrics["effective_batch_size"] == 4 * 256
    # linear to 0 over 3 steps: 0 at the end of the only epoch
    assert float(history(run_dir)[0]["lr"]) == pytest.approx(0.0, abs=1e-12)


# -- fp16: the GradScaler path (CUDA in runs; the scaler itself also works on the CPU) -------------
def test_fp16_scaler_path_equals_the_unscaled_step_and_skips_inf_steps():
    spec, plain = toy_trainer("mmoe", TrainerConfig(lr=1e-2, grad_clip_norm=1.0))
    _, scaled = toy_trainer("mmoe", TrainerConfig(lr=1e-2, grad_clip_norm=1.0))
    scaled.stepper.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    batch = toy_batch(spec, 64, 1)
    plain.step(batch)
    scaled.step(batch)
    for a, b in zip(plain.model.parameters(), scaled.model.parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-6)
    before = [p.detach().clone() for p in scaled.model.parameters()]
    first = next(scaled.model.parameters())
    handle = first.register_hook(lambda g: torch.full_like(g, math.inf))  # an overflowed step
    scaled.step(batch)
    handle.remove()
    assert all(torch.equal(a, p) for a, p in zip(before, scaled.model.parameters(), strict=True))
    assert scaled.stepper.scaler.get_scale() == 2.0**9  # halved after the skipped step


def test_fp16_refuses_a_balancer_that_writes_its_own_gradients(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    cfg = compose_train(["trainer.precision=fp16", "device=cuda", "balance=pcgrad"])
    with pytest.raises(MtlrecError, match=r"^trainer.precision=fp16 scales the loss"):
        RunSettings.from_config(cfg)


# -- weight EMA -----------------------------------------------------------------------------------
def test_ema_weights_are_evaluated_and_saved_in_best(train_tiny):
    run_dir, metrics = train_tiny(["trainer.ema_decay=0.9", "trainer.epochs=1"])
    best = torch.load(run_dir / "checkpoints" / "best.pt", weights_only=True)
    last = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    ema = last["train_state"]["step_state"]["ema"]
    for key, value in best["model_state"].items():
        assert torch.equal(value, ema[f"module.{key}"]), key  # best.pt: the averaged weights
    assert any(
        not torch.equal(v, last["model_state"][k]) for k, v in best["model_state"].items()
    )  # last.pt trains on from the raw ones
    evaluated = subprocess.run(
        [sys.executable, "-m", "mtlrec", "evaluate", str(run_dir), "--split", "test", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert evaluated.returncode == 0, evaluated.stderr
    got = json.loads(evaluated.stdout)
    got = got.get("metrics", got)
    assert got["test/ctr_auc"] == pytest.approx(metrics["metrics"]["test/ctr_auc"], abs=1e-6)


def test_ema_is_the_exponential_average_of_the_step_weights():
    spec, trainer = toy_trainer("mmoe", TrainerConfig(lr=1e-2, ema_decay=0.5))
    ema = trainer.stepper.ema
    assert ema is not None
    seen = []
    for s in range(3):
        trainer.step(toy_batch(spec, 64, s))
        seen.append([p.detach().clone() for p in trainer.model.parameters()])
    for k, averaged in enumerate(ema.module.parameters()):
        expected = 0.5 * (0.5 * seen[0][k] + 0.5 * seen[1][k]) + 0.5 * seen[2][k]  # 1st: a copy
        assert torch.allclose(averaged, expected, atol=1e-7)
    assert isinstance(trainer.stepper, OptimizerStep)


@pytest.mark.parametrize("native", [False, True])
def test_bf16_on_a_cpu_without_native_bfloat16_warns_that_it_is_slower(monkeypatch, caplog, native):
    from mtlrec.training import optim_step

    monkeypatch.setattr(optim_step, "cpu_has_native_bf16", lambda: native)
    with caplog.at_level("WARNING", logger="mtlrec.training.optim_step"):
        toy_trainer("mmoe", TrainerConfig(precision="bf16"))
    warned = [r.getMessage() for r in caplog.records if "bf16" in r.getMessage()]
    if native:
        assert warned == []
    else:
        assert warned == [
            "trainer.precision=bf16: this CPU has no native bfloat16 (AVX512-BF16/AMX), so "
            "bf16 matmuls are emulated and slower than fp32; use trainer.precision=fp32 here"
        ]
