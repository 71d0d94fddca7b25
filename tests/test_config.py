"""Config composition: every model x dataset composes, sizes resolve, typos fail."""

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from conftest import compose_train
from mtlrec.models import MODELS, model_config
from mtlrec.settings import RunSettings

MODEL_NAMES = sorted(MODELS)  # every registered model: a new one is picked up here


@pytest.mark.parametrize("model", MODEL_NAMES)
@pytest.mark.parametrize("dataset", ["synthetic_ccp", "prepared"])
def test_every_model_and_dataset_compose(model, dataset):
    overrides = [f"model={model}", f"dataset={dataset}"]
    if dataset == "prepared":
        overrides.append("dataset.path=/some/prepared/dir")
    cfg = compose_train(overrides)
    assert cfg.model.name == model
    assert cfg.dataset.name == dataset
    # The typed model config accepts every key of the YAML and validates.
    cls, typed = model_config(OmegaConf.to_container(cfg.model, resolve=True))
    assert cls is MODELS[model]
    assert typed.embedding_dim == 16
    # ... and every value of its YAML has the type its Config declares (mtlrec.settings).
    settings = RunSettings.from_config(cfg)
    assert settings.model.cls is cls and type(settings.model.config) is cls.Config
    assert settings.model.config == typed


@pytest.mark.parametrize("device", ["auto", "cpu", "cuda"])
def test_every_device_yaml_is_a_typed_device_config(device):
    settings = RunSettings.from_config(compose_train([f"device={device}"]))
    assert (settings.device.type, settings.device.index) == (device, 0)


def test_primary_config_defaults():
    cfg = compose_train()
    assert cfg.model.name == "esmm"
    assert cfg.dataset.name == "synthetic_ccp"
    assert cfg.dataset.num_rows == 200_000
    assert cfg.device.type == "auto"
    assert cfg.seed == 42 and cfg.data_order_seed == 42
    assert cfg.trainer.epochs == 5 and cfg.trainer.batch_size == 1024


def test_esmm_tower_dims_follow_tower_dims_unless_set():
    cfg = compose_train(["model.tower_dims=[8,4]"])
    assert list(cfg.model.ctr_tower_dims) == [8, 4] and list(cfg.model.cvr_tower_dims) == [8, 4]
    cfg = compose_train(["model.tower_dims=[8,4]", "model.cvr_tower_dims=[16]"])
    assert list(cfg.model.ctr_tower_dims) == [8, 4] and list(cfg.model.cvr_tower_dims) == [16]


def test_mmoe_sizes_are_plain_lists():
    cfg = compose_train(["model=mmoe", "model.num_experts=4", "model.expert_dims=[64,32]"])
    assert cfg.model.num_experts == 4
    assert list(cfg.model.expert_dims) == [64, 32]
    assert list(cfg.model.gate_dims) == [] and list(cfg.model.tower_dims) == [32]


def test_dataset_path_follows_data_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("MTLREC_DATA_DIR", str(tmp_path))
    cfg = compose_train(["dataset.num_rows=5000", "dataset.generator_seed=3"])
    assert cfg.dataset.path == f"{tmp_path}/synthetic_ccp-v3-n5000-s3"


@pytest.mark.parametrize("override", ["trainer.epoch=3", "model.num_expert=2", "foo=1"])
def test_unknown_keys_fail(override):
    with pytest.raises(ConfigCompositionException) as err:
        compose_train([override])
    assert override.split("=")[0].split(".")[-1] in str(err.value) + str(err.value.__cause__)


def test_unknown_model_lists_the_options():
    with pytest.raises(ConfigCompositionException) as err:
        compose_train(["model=nope"])
    message = str(err.value)
    assert "nope" in message and "esmm" in message and "mmoe" in message
