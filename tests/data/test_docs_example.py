"""docs/datasets.md's multi-valued-fields example, exactly as written, prepared on a generated CSV."""

from __future__ import annotations

import torch
import yaml

from helpers.datagen import REPO
from helpers.multidata import write_rich_csv
from mtlrec.data.encoders import encode_raw
from mtlrec.data.loader import load_split
from mtlrec.data.sources import prepare_dataset

MARKER = "<!-- features-example: tests/data/test_docs_example.py runs exactly this block -->"


def docs_example() -> dict:
    text = (REPO / "docs" / "datasets.md").read_text()
    block = text.split(MARKER, 1)[1].split("```yaml\n", 1)[1].split("```", 1)[0]
    return yaml.safe_load(block)


def test_the_documented_example_prepares_with_every_key(tmp_path):
    cfg = docs_example()
    for i, s in enumerate(("train", "val", "test")):
        write_rich_csv(tmp_path / f"{s}.csv", seed=10 + i)
    cfg["raw_dir"], cfg["path"] = str(tmp_path), str(tmp_path / "rich")
    result = prepare_dataset(cfg)
    spec = result.spec
    layout = spec.layout
    assert layout.sparse == {
        "user": (0, 1), "item": (1, 2), "device": (2, 3), "genres": (3, 6),
        "tags": (6, 10), "history": (10, 15),
    }  # fmt: skip
    assert layout.dense == {"price": (0, 1)} and layout.weights == {"tags": (1, 5)}
    assert spec.feature("history").shares_vocab_with == "item"
    assert spec.feature("device").hash_buckets == 64
    assert spec.feature_groups == {"user_side": ["user", "history"]}
    assert [t.name for t in spec.tasks] == ["rich", "rating"]
    test = load_split(tmp_path / "rich" / "test.parquet", spec, spec.tasks)
    sparse, dense, _ = encode_raw(tmp_path / "test.csv", tmp_path / "rich")
    assert torch.equal(sparse, test.sparse) and torch.equal(dense, test.dense)
