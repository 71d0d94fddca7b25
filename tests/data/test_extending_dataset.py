"""docs/extending.md's dataset example is true: its two files (the source module and the yaml,
taken from the page) are all it takes to prepare a new dataset and train on it."""

from __future__ import annotations

import sys

import numpy as np
import pandas as pd
import pytest

from helpers.datagen import REPO, train
from mtlrec.data import sources
from mtlrec.data.prepare import compose_prepare
from mtlrec.data.sources import SOURCES, prepare_dataset, resolve_dataset_dir
from mtlrec.data.spec import DatasetSpec
from mtlrec.errors import MtlrecError


def example_files() -> tuple[str, str]:
    """(the source module, the yaml) of docs/extending.md's "A dataset" section."""
    section = (REPO / "docs" / "extending.md").read_text().split("## A dataset\n", 1)[1]
    section = section.split("\n## ", 1)[0]
    module = section.split("```python\n", 1)[1].split("```", 1)[0]
    yaml_text = section.split("```yaml\n", 1)[1].split("```", 1)[0]
    assert module.startswith("# mtlrec/data/sources/my_data.py\n")
    assert yaml_text.startswith("# conf/dataset/my_data.yaml\n")
    return module, yaml_text


@pytest.fixture
def my_data(tmp_path, monkeypatch):
    """The example module placed in the sources package (its path extended to a temp dir, so the
    checkout is not written) and found by the registry's own scan; the yaml in a config dir."""
    module, yaml_text = example_files()
    (tmp_path / "plugin").mkdir()
    (tmp_path / "plugin" / "my_data.py").write_text(module)
    monkeypatch.setattr(sources, "__path__", [*sources.__path__, str(tmp_path / "plugin")])
    sources._discover()
    (tmp_path / "my_conf" / "dataset").mkdir(parents=True)
    (tmp_path / "my_conf" / "dataset" / "my_data.yaml").write_text(yaml_text)
    rng = np.random.default_rng(0)
    n = 2000
    click = (rng.random(n) < 0.3).astype(int)
    (tmp_path / "shop").mkdir()
    pd.DataFrame(
        {
            "user_id": [f"u{u}" for u in rng.integers(0, 50, n)],
            "item_id": [f"i{i}" for i in rng.integers(0, 40, n)],
            "price": np.round(rng.lognormal(3, 1, n), 2),
            "click": click,
            "buy": click * (rng.random(n) < 0.4),
        }
    ).to_csv(tmp_path / "shop" / "log.csv", index=False)
    yield tmp_path
    SOURCES.pop("my_data", None)
    sys.modules.pop("mtlrec.data.sources.my_data", None)


def test_the_example_dataset_prepares_and_trains_from_its_two_files(my_data):
    assert "my_data" in SOURCES and SOURCES["my_data"].preparable
    overrides = [
        f"data_dir={my_data / 'cache'}",
        "dataset=my_data",
        f"dataset.raw_dir={my_data / 'shop'}",
    ]
    cfg = compose_prepare(overrides, str(my_data / "my_conf"))["dataset"]
    result = prepare_dataset(cfg)
    assert result.path == my_data / "cache" / "my_data"
    spec = DatasetSpec.load(resolve_dataset_dir(cfg))
    assert [f.name for f in spec.features] == ["user_id", "item_id", "price"]
    assert [(t.name, t.label, t.where) for t in spec.tasks] == [
        ("ctr", "click", None),
        ("cvr", "buy", "click"),
    ]
    rows = {s: result.summary[s].rows for s in ("train", "val", "test")}
    assert sum(rows.values()) == 2000 and 1400 < rows["train"] < 1800

    # a misspelt key of the new Config is one line, like any shipped dataset's
    with pytest.raises(MtlrecError, match=r"dataset.holdot is not a key .*did you mean"):
        prepare_dataset({**cfg, "holdot": 0.2})

    metrics = train(
        my_data / "run",
        [
            *overrides,
            f"hydra.searchpath=[file://{my_data / 'my_conf'}]",
            "model=esmm",
            "trainer.epochs=1",
        ],
    )
    assert metrics["status"] == "completed"
    assert 0.0 <= metrics["metrics"]["test/ctr_auc"] <= 1.0
    assert 0.0 <= metrics["metrics"]["test/cvr_auc"] <= 1.0
