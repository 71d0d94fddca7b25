"""Every registered model: its yaml, its typed config (one line per bad key or type), batch norm on a
1-row batch, and a throw-away model registered in-process that trains through experiment.run."""

from __future__ import annotations

import dataclasses
import importlib.resources
import typing
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import yaml
from omegaconf import OmegaConf

from conftest import compose_train, run_training
from mtlrec.data.spec import DatasetSpec, FeatureSpec, FunnelSpec, TaskSpec
from mtlrec.errors import MtlrecError
from mtlrec.models import MODELS, build_model, model_config
from mtlrec.models.base import MultiTaskModel
from mtlrec.models.cvr_base import CvrBaseConfig
from mtlrec.models.layers import BatchNorm1d, FeatureEmbedding

CONF = Path(str(importlib.resources.files("mtlrec.conf"))) / "model"
NAMES = sorted(MODELS)
SPEC = DatasetSpec(
    name="toy",
    features=(
        FeatureSpec("user", "sparse", 7),
        FeatureSpec("item", "sparse", 5),
        FeatureSpec("price", "dense"),
    ),
    labels=("click", "conversion", "action"),
    tasks=(TaskSpec("ctr", "click"), TaskSpec("cvr", "conversion", where="click")),
    funnel=FunnelSpec("click", "conversion", action="action"),  # action: ESM²'s D-action label
)


def composed(name: str, *overrides: str) -> dict:
    cfg = compose_train([f"model={name}", *overrides])
    return OmegaConf.to_container(cfg.model, resolve=True)


def test_registry_lists_every_yaml_and_every_yaml_names_its_model():
    assert sorted(p.stem for p in CONF.glob("*.yaml")) == NAMES
    for name in NAMES:
        assert yaml.safe_load((CONF / f"{name}.yaml").read_text())["name"] == name


@pytest.mark.parametrize("name", NAMES)
def test_yaml_keys_are_the_config_fields_and_build(name):
    values = composed(name)
    cls, cfg = model_config(values)
    assert cls is MODELS[name] and isinstance(cfg, cls.Config)
    assert set(values) == {f.name for f in dataclasses.fields(cls.Config)}
    # the yaml's defaults are the dataclass defaults (an interpolation like ${.tower_dims} aside)
    raw = yaml.safe_load((CONF / f"{name}.yaml").read_text())
    got, default = dataclasses.asdict(cfg), dataclasses.asdict(cls.Config(name=name))
    for key, value in raw.items():
        if not (isinstance(value, str) and value.startswith("${")):
            assert got[key] == default[key], key


@pytest.mark.parametrize("name", NAMES)
def test_unknown_key_is_one_line_with_a_suggestion(name):
    with pytest.raises(MtlrecError) as err:
        model_config({**composed(name), "batch_norms": True})
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith(
        "model.batch_norms is not a key of model (did you mean model.batch_norm?); its keys are ["
    )


@pytest.mark.parametrize("name", NAMES)
def test_wrong_types_are_one_line_never_coerced(name):
    with pytest.raises(MtlrecError) as err:
        model_config({**composed(name), "batch_norm": "abc"})
    assert str(err.value) == "model.batch_norm='abc': expected true or false"
    hints = typing.get_type_hints(MODELS[name].Config)
    lists = [k for k, t in hints.items() if typing.get_origin(t) is list]
    assert lists, "every model has layer sizes"
    with pytest.raises(MtlrecError) as err:
        model_config({**composed(name), lists[0]: 64})
    assert str(err.value) == f"model.{lists[0]}=64: expected a list of integers"


@pytest.mark.parametrize("name", NAMES)
def test_a_composed_config_in_any_form_builds_the_same(name):
    node = compose_train([f"model={name}"]).model
    want = model_config(composed(name))[1]
    assert model_config(node)[1] == want  # the DictConfig itself
    assert model_config(dict(node))[1] == want  # a dict holding ListConfig values


def test_the_issue_examples_through_a_composed_config():
    with pytest.raises(MtlrecError, match=r"^model.expert_dims=64: expected a list of integers$"):
        model_config(compose_train(["model=mmoe", "model.expert_dims=64"]).model)
    with pytest.raises(MtlrecError, match=r"^model.batch_norm='abc': expected true or false$"):
        model_config(compose_train(["model=mmoe", "model.batch_norm=abc"]).model)


def batch(n: int):
    g = torch.Generator().manual_seed(n)
    ids = torch.stack([torch.randint(0, 7, (n,), generator=g), 7 + torch.randint(0, 5, (n,))], 1)
    return ids, torch.randn(n, 1, generator=g)


@pytest.mark.parametrize("name", NAMES)
def test_batch_norm_on_a_one_row_training_batch_uses_running_statistics(name):
    """Choice: a 0/1-row training batch is normalized like eval (running stats, left unchanged)."""
    torch.manual_seed(0)
    model, _ = build_model(
        {**composed(name), "batch_norm": True, "embedding_dim": 4}, SPEC, SPEC.tasks
    )
    norms = [m for m in model.modules() if isinstance(m, BatchNorm1d)]
    assert norms, f"{name} has no batch norm with batch_norm=true"
    model.train()
    model(*batch(8))  # a normal batch moves the running statistics
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    one = batch(1)
    torch.manual_seed(1)
    out = model(*one)
    loss = sum(v.float().sum() for k, v in out.items() if k in model.output_types)
    extra = getattr(
        model, "extra_loss", None
    )  # towers trained by the regularizer only (DCMT's twin)
    if extra is not None and (reg := extra(out, torch.ones(1, len(SPEC.labels)))) is not None:
        loss = loss + reg
    loss.backward()
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), f"{k} changed on a 1-row batch"
    assert all(m.weight.grad is not None for m in norms)
    model.eval()
    torch.manual_seed(1)
    ref = model(*one)
    for k in model.output_types:  # dropout is 0 by default: train on 1 row == eval
        if name != "snr":  # snr samples its codes in training
            torch.testing.assert_close(out[k], ref[k])
        assert torch.isfinite(out[k]).all()


def test_batch_norm_keeps_torch_behaviour_on_two_rows():
    torch.manual_seed(0)
    ours, theirs = BatchNorm1d(3), torch.nn.BatchNorm1d(3)
    x = torch.randn(2, 3)
    torch.testing.assert_close(ours(x), theirs(x))
    torch.testing.assert_close(ours.running_mean, theirs.running_mean)
    assert ours(torch.randn(0, 3)).shape == (0, 3)


@dataclass
class TinyLogregConfig(CvrBaseConfig):
    """cvr_base's keys, so `model=cvr_base model.name=tiny_logreg` composes."""


class TinyLogreg(MultiTaskModel):
    """A throw-away model: one logistic regression per dataset task on the embedding."""

    Config = TinyLogregConfig

    def __init__(self, spec, tasks, cfg):
        super().__init__()
        self.output_types = {t.output_name: t.type for t in tasks}
        self.embedding = FeatureEmbedding(spec, cfg.embedding_dim, cfg.embedding_init_std)
        self.head = torch.nn.Linear(self.embedding.out_dim, len(tasks))

    def forward(self, sparse, dense):
        y = self.head(self.embedding(sparse, dense))
        return {name: y[:, k] for k, name in enumerate(self.output_types)}


def test_a_model_registered_in_process_trains_through_experiment_run(tmp_path, monkeypatch):
    monkeypatch.setitem(MODELS, "tiny_logreg", TinyLogreg)
    run_dir, metrics = run_training(
        tmp_path, ["model=cvr_base", "model.name=tiny_logreg", "trainer.epochs=1"]
    )
    assert metrics["status"] == "completed" and metrics["epochs_run"] == 1
    # It learned: an untrained logit (p = 0.5) scores logloss ln 2 = 0.6931 whatever the labels;
    # training moves the bias towards the 4.5% click rate (AUC after one epoch of a linear model
    # is too noisy to test).
    assert metrics["metrics"]["test/ctr_logloss"] < 0.6931
    assert 0.0 <= metrics["metrics"]["test/ctr_auc"] <= 1.0
    state = torch.load(run_dir / "checkpoints" / "best.pt", weights_only=False)["model_state"]
    assert state["head.weight"].shape[0] == 2  # ctr and cvr, the dataset's tasks


@pytest.mark.parametrize(
    "model", sorted(n for n, c in MODELS.items() if not c.trains_dataset_tasks)
)
def test_a_task_list_a_fixed_task_model_cannot_train_refuses_the_run_in_one_line(train_tiny, model):
    with pytest.raises(MtlrecError) as e:
        action = (
            ["dataset=synthetic_ccp_action", "dataset.num_rows=4000"] if model == "esm2" else []
        )
        train_tiny([f"model={model}", "dataset.tasks=[ctr]", *action])
    line = str(e.value)
    assert line.startswith(f"dataset.tasks=['ctr']: model {model} trains a fixed set of tasks (")
    assert "), not a selection, so the run is refused; drop dataset.tasks" in line
    assert "ignores" not in line  # it does not ignore the list: it refuses the run
    assert line.endswith("(e.g. model=mmoe, shared_bottom or single_task)")


def test_models_that_train_the_dataset_tasks_take_the_list(train_tiny):
    _, metrics = train_tiny(["model=mmoe", "dataset.tasks=[ctr]", "trainer.epochs=1"])
    assert metrics["status"] == "completed"
    assert "test/ctr_auc" in metrics["metrics"] and "test/cvr_loss" not in metrics["metrics"]
