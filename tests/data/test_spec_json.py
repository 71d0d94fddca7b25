"""An edited spec.json with a wrong type is one line naming the file and the key."""

from __future__ import annotations

import json

import pytest

from mtlrec.data.spec import DatasetSpec, FeatureSpec, FunnelSpec, TaskSpec
from mtlrec.errors import MtlrecError

SPEC = DatasetSpec(
    name="toy",
    features=(FeatureSpec("u", "sparse", 1001, oov_id=0), FeatureSpec("x", "dense")),
    labels=("click", "buy"),
    tasks=(TaskSpec("ctr", "click"), TaskSpec("cvr", "buy", where="click")),
    funnel=FunnelSpec("click", "buy"),
    splits={"train": "train.parquet", "val": "val.parquet", "test": "test.parquet"},
)


def edited(tmp_path, edit):
    SPEC.save(tmp_path)
    path = tmp_path / "spec.json"
    d = json.loads(path.read_text())
    edit(d)
    path.write_text(json.dumps(d))
    with pytest.raises(MtlrecError) as e:
        DatasetSpec.load(tmp_path)
    return str(e.value), path


def _set(*keys_value):
    *keys, value = keys_value

    def edit(d):
        for k in keys[:-1]:
            d = d[k]
        d[keys[-1]] = value

    return edit


@pytest.mark.parametrize(
    ("edit", "line"),
    [
        (
            _set("features", 0, "vocab_size", "1001"),
            "features[0].vocab_size='1001': expected an integer",
        ),
        (
            _set("features", 0, "vocab_size", 1001.5),
            "features[0].vocab_size=1001.5: expected an integer",
        ),
        (_set("features", 0, "oov_id", "0"), "features[0].oov_id='0': expected an integer or null"),
        (_set("labels", "click"), "labels='click': expected a list of strings"),
        (_set("splits", ["train.parquet"]), "splits=['train.parquet']: expected a mapping"),
        (
            _set("features", 1, "kind", "float"),
            "features[1].kind='float': expected one of sparse, dense, bag, sequence",
        ),
        (_set("tasks", 0, "weight", "1"), "tasks[0].weight='1': expected a number"),
        (_set("funnel", "click", 1), "funnel.click=1: expected a string"),
    ],
)
def test_a_wrong_type_is_one_line_naming_the_file_and_key(tmp_path, edit, line):
    msg, path = edited(tmp_path, edit)
    assert msg == f"{path}: {line}"


def test_a_missing_key_or_unknown_field_is_one_line(tmp_path):
    msg, path = edited(tmp_path, lambda d: d.pop("labels"))
    assert msg == f"{path}: malformed dataset spec ('labels'); re-create it"
    msg, path = edited(tmp_path, _set("features", 0, "vocab", 3))
    assert msg.startswith(
        f"{path}: features[0].vocab is not a key of {path}: features[0] (did you mean"
    )


def test_the_saved_spec_round_trips(tmp_path):
    SPEC.save(tmp_path)
    assert DatasetSpec.load(tmp_path) == SPEC
    assert DatasetSpec.from_dict(SPEC.to_dict()) == SPEC  # tuples, as checkpoints hold them
