"""Every balancer's `balance.*` keys are a typed Config dataclass: a wrong key, type or value is
one line. Balancers are taken from the registry, so a new one is tested without editing this."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import typing
from pathlib import Path

import pytest
import yaml
from torch import nn

from mtlrec.config_schema import describe
from mtlrec.data.spec import TaskSpec
from mtlrec.errors import MtlrecError
from mtlrec.training.balance import BALANCERS, balance_config, make_balancer

TWO = (TaskSpec("a", "la"), TaskSpec("b", "lb"))
CONF = Path(__file__).resolve().parents[2] / "conf" / "balance"
FIELDS = [(n, f.name) for n in sorted(BALANCERS) for f in dataclasses.fields(BALANCERS[n].Config)]


def _error(mapping) -> str:
    with pytest.raises(MtlrecError) as err:
        make_balancer(mapping, TWO, nn.Linear(2, 2))
    assert "\n" not in str(err.value)
    return str(err.value)


@pytest.mark.parametrize("name", sorted(BALANCERS))
def test_each_balancer_declares_a_config_and_whether_it_writes_gradients(name):
    cls = BALANCERS[name]
    assert dataclasses.is_dataclass(cls.Config) and isinstance(cls.writes_grads, bool)
    assert cls.name == name
    # its yaml (conf/balance/<name>.yaml) holds exactly the Config's keys, with its defaults
    shipped = yaml.safe_load((CONF / f"{name}.yaml").read_text())
    assert shipped.pop("name") == name
    assert shipped == dataclasses.asdict(cls.Config())
    assert balance_config(shipped | {"name": name}) == (cls, cls.Config())


@pytest.mark.parametrize("name", sorted(BALANCERS))
def test_an_unknown_key_is_one_line_naming_the_keys(name):
    keys = sorted(["name", *(f.name for f in dataclasses.fields(BALANCERS[name].Config))])
    assert _error({"name": name, "foo": 1}) == (
        f"balance.foo is not a key of balance={name}; its keys are {keys}"
    )


@pytest.mark.parametrize(("name", "key"), FIELDS)
def test_a_wrong_type_is_one_line_naming_key_value_and_type(name, key):
    tp = typing.get_type_hints(BALANCERS[name].Config)[key]
    bad = [1] if "a string" in describe(tp) else "abc"  # a type that key does not take
    assert _error({"name": name, key: bad}) == f"balance.{key}={bad!r}: expected {describe(tp)}"


def test_exact_lines_for_types_ranges_and_near_misses():
    assert _error({"name": "pcgrad", "seed": 1.5}) == "balance.seed=1.5: expected an integer"
    assert _error({"name": "gradnorm", "alpha": True}) == "balance.alpha=True: expected a number"
    assert _error({"name": "gradnorm", "alpha": -1}) == "balance.alpha must be >= 0, got -1.0"
    assert _error({"name": "dwa", "temperature": 0}) == "balance.temperature must be > 0, got 0.0"
    assert _error({"name": "fixed", "weights": {"a": -2}}) == (
        "balance.weights.a must be a number >= 0, got -2.0"
    )
    assert _error({"name": "dwa", "temprature": 1.0}) == (
        "balance.temprature is not a key of balance=dwa (did you mean balance.temperature?); "
        "its keys are ['name', 'temperature']"
    )
    assert _error({"name": "pcgard"}) == (
        f"balance.name 'pcgard' is unknown (did you mean pcgrad?); valid: {sorted(BALANCERS)}"
    )
    # an int where a number is expected is fine, and kept as a float
    assert balance_config({"name": "gradnorm", "alpha": 2})[1].alpha == 2.0


@pytest.mark.parametrize(
    ("override", "line", "code"),
    [
        ("balance.seed=abc", "mtlrec train: error: balance.seed='abc': expected an integer", 1),
        # Hydra's own check of the composed config, one line too; a mistyped key is a usage
        # error (exit 2)
        ("balance.foo=1", None, 2),
    ],
)
def test_a_bad_balance_key_through_the_cli_is_one_line(tmp_path, override, line, code):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "mtlrec",
            "train",
            "balance=pcgrad",
            override,
            "dataset.num_rows=2000",
            "trainer.epochs=1",
            "trainer.num_threads=1",
            "device=cpu",
            f"hydra.run.dir={tmp_path / 'run'}",
        ],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        env={**os.environ, "HYDRA_FULL_ERROR": "0"},
        timeout=120,
    )
    assert proc.returncode == code, proc.stderr
    assert "Traceback" not in proc.stderr
    # checked before the run (RunSettings, or the CLI's pre-check of unknown keys): one line,
    # no run dir
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    if line is not None:
        assert proc.stderr.strip() == line
    else:
        assert "balance.foo" in proc.stderr
    assert not (tmp_path / "run").exists()
