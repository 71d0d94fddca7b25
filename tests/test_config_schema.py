"""mtlrec.config_schema (typed config dataclasses) and mtlrec.metric_registry (metric directions)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest

from mtlrec import metric_registry
from mtlrec.config_schema import build, check_value, describe
from mtlrec.errors import MtlrecError


@dataclass
class Example:
    lr: float = 1e-3
    clip: float | None = None
    dims: list[int] = field(default_factory=lambda: [64])
    shape: tuple[int, ...] = (1, 2)
    batch_norm: bool = False
    optimizer: Literal["adam", "adamw"] = "adam"
    patience: int | None = 2
    extra: dict[str, float] = field(default_factory=dict)

    def validate(self) -> None:
        if self.lr <= 0:
            raise MtlrecError(f"trainer.lr must be > 0, got {self.lr}")


@pytest.mark.parametrize(
    ("values", "line"),
    [
        ({"clip": "abc"}, "trainer.clip='abc': expected a number or null"),
        ({"dims": 64}, "trainer.dims=64: expected a list of integers"),
        ({"dims": [1, "a"]}, "trainer.dims=[1, 'a']: expected a list of integers"),
        ({"batch_norm": "abc"}, "trainer.batch_norm='abc': expected true or false"),
        ({"batch_norm": 1}, "trainer.batch_norm=1: expected true or false"),
        ({"optimizer": "sgd"}, "trainer.optimizer='sgd': expected one of adam, adamw"),
        ({"patience": 2.5}, "trainer.patience=2.5: expected an integer or null"),
        ({"patience": True}, "trainer.patience=True: expected an integer or null"),
        ({"extra": [1]}, "trainer.extra=[1]: expected a mapping"),
        ({"lr": -1}, "trainer.lr must be > 0, got -1.0"),
    ],
)
def test_wrong_types_are_one_line_naming_key_value_and_allowed(values, line):
    with pytest.raises(MtlrecError) as e:
        build(Example, values, "trainer")
    assert str(e.value) == line


def test_unknown_key_suggests_the_nearest():
    with pytest.raises(MtlrecError) as e:
        build(Example, {"patiense": 3}, "trainer")
    assert str(e.value).startswith(
        "trainer.patiense is not a key of trainer (did you mean trainer.patience?); its keys are"
    )
    with pytest.raises(MtlrecError) as e:
        build(Example, {"zzz": 3}, "trainer")
    assert "did you mean" not in str(e.value)


def test_a_group_that_is_no_mapping_is_one_line():
    with pytest.raises(MtlrecError, match=r"^trainer='0': expected a mapping of keys$"):
        build(Example, "0", "trainer")  # type: ignore[arg-type]


def test_values_are_kept_not_coerced_between_kinds():
    cfg = build(Example, {"lr": 1, "dims": [8, 4], "shape": [3], "patience": None}, "trainer")
    assert cfg.lr == 1.0 and isinstance(cfg.lr, float)
    assert cfg.dims == [8, 4]
    assert cfg.shape == (3,)
    assert cfg.patience is None
    assert cfg.clip is None and cfg.batch_norm is False


def test_check_value_and_describe():
    assert check_value(int | None, None, "k") is None
    assert describe(list[float]) == "a list of numbers"
    assert describe(Literal["auto"] | bool) == "one of auto, true, false"
    assert describe(Literal["a", "b"] | None) == "one of a, b or null"
    with pytest.raises(MtlrecError, match=r"^seed='abc': expected an integer$"):
        check_value(int, "abc", "seed")


@pytest.mark.parametrize(
    ("key", "direction"),
    [
        ("val/cvr_auc_entire", "max"),
        ("val/mean_auc", "max"),
        ("test/ctr_gauc", "max"),
        ("val/ctr_logloss", "min"),
        ("val/mean_mse", "min"),
        ("train/loss", "min"),
        ("val/loss", "min"),
        ("val/income_mae", "min"),
        ("val/foo", None),
        ("lr", None),
        ("val/gate_0_1", None),
    ],
)
def test_metric_directions_come_from_the_registry(key, direction):
    assert metric_registry.direction(key) == direction


def test_metric_keys_parse_into_split_task_metric_suffix():
    parsed = metric_registry.parse("val/cvr_auc_entire")
    assert parsed is not None
    assert (parsed.split, parsed.task, parsed.metric.name, parsed.suffix) == (
        "val",
        "cvr",
        "auc",
        "_entire",
    )
    assert all(m.definition for m in metric_registry.METRICS.values())


def test_a_path_key_is_a_path_with_home_expanded_once():
    """dataset.path / raw_dir / vocab_from: typed once here, so no reader parses the string."""

    @dataclass
    class WithPath:
        path: Path | None = None

    home = Path("~").expanduser()
    assert build(WithPath, {"path": "~/data/x"}, "dataset").path == home / "data" / "x"
    assert build(WithPath, {"path": "rel/dir"}, "dataset").path == Path("rel/dir")
    assert build(WithPath, {"path": ""}, "dataset").path is None  # '' is no path, like null
    with pytest.raises(MtlrecError) as e:
        build(WithPath, {"path": 3}, "dataset")
    assert str(e.value) == "dataset.path=3: expected a path or null"
