"""The logger registry: every logger's shipped yaml is exactly its Config; a wrong key or type
is one line; a logger added to the registry is picked up by build_logger."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from mtlrec import loggers
from mtlrec.errors import MtlrecError
from mtlrec.loggers import LOGGERS, RunLogger, build_logger, logger_config

CONF = Path(__file__).resolve().parents[2] / "conf" / "logger"


def _fields(name: str) -> list[str]:
    return [f.name for f in dataclasses.fields(LOGGERS[name].Config)]


def test_every_shipped_logger_yaml_has_a_registered_class():
    assert sorted(p.stem for p in CONF.glob("*.yaml")) == sorted(LOGGERS)


@pytest.mark.parametrize("name", sorted(LOGGERS))
def test_the_shipped_yaml_is_exactly_the_config(name, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    values = OmegaConf.to_container(OmegaConf.load(CONF / f"{name}.yaml"), resolve=True)
    assert sorted(values) == sorted(_fields(name))
    cls, cfg = logger_config(values)
    assert cls is LOGGERS[name] and cls.name == name
    assert cfg == cls.Config()  # the yaml's values are the Config's defaults


@pytest.mark.parametrize("name", sorted(LOGGERS))
def test_a_wrong_key_is_one_line(name):
    with pytest.raises(MtlrecError) as info:
        logger_config({"name": name, "bogus_key": 1})
    assert str(info.value) == (
        f"logger.bogus_key is not a key of logger; its keys are {sorted(_fields(name))}"
    )


@pytest.mark.parametrize("name", sorted(n for n in LOGGERS if len(_fields(n)) > 1))
def test_a_wrong_type_is_one_line(name):
    field = next(f for f in dataclasses.fields(LOGGERS[name].Config) if f.name != "name")
    with pytest.raises(MtlrecError) as info:
        logger_config({"name": name, field.name: 3})
    assert str(info.value) in (
        f"logger.{field.name}=3: expected a string or null",
        f"logger.{field.name}=3: expected a string",
    )


def test_a_typo_gets_a_suggestion():
    with pytest.raises(MtlrecError, match=r"did you mean logger\.tracking_uri\?"):
        logger_config({"name": "mlflow", "trackin_uri": "x"})


def test_a_logger_added_to_the_registry_is_built(tmp_path, monkeypatch):
    class JsonLinesLogger(RunLogger):
        name = "jsonl"

        @dataclass
        class Config:
            name: str = "jsonl"
            path: str = "log.jsonl"

        @classmethod
        def from_config(cls, cfg, run_dir, config):
            logger = cls()
            logger.target = Path(run_dir) / cfg.path
            return logger

    monkeypatch.setitem(loggers.LOGGERS, "jsonl", JsonLinesLogger)
    built = build_logger({"name": "jsonl", "path": "x.jsonl"}, tmp_path, {})
    assert isinstance(built, JsonLinesLogger) and built.target == tmp_path / "x.jsonl"
    with pytest.raises(MtlrecError, match=r"^logger.name 'comet' is unknown; use one of: .*jsonl$"):
        build_logger({"name": "comet"}, tmp_path, {})


def test_none_and_missing_config_are_the_no_op_logger(tmp_path):
    assert type(build_logger(None, tmp_path, {})) is RunLogger
    assert type(build_logger(OmegaConf.create({"name": "none"}), tmp_path, {})) is RunLogger
