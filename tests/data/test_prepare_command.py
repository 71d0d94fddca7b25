"""`mtlrec prepare`'s closing hint: the train command carries the overrides used to prepare."""

from __future__ import annotations

from helpers.datagen import write_events
from mtlrec.commands.prepare import main
from mtlrec.data.prepare import train_hint

TINY_YAML = """\
name: tiny
preparer: csv
path: ${{data_dir}}/tiny-m${{.min_count}}
raw_dir: {raw}
min_count: 1
files: {{train: train.csv, val: val.csv, test: test.csv}}
sparse: [user, item, city]
dense: [price, age]
targets: {{ctr: {{label: click}}}}
"""


def test_train_hint_keeps_the_overrides_that_shape_the_dataset(tmp_path, capsys):
    raw, _ = write_events(tmp_path)
    conf = tmp_path / "conf" / "dataset"
    conf.mkdir(parents=True)
    (conf / "tiny.yaml").write_text(TINY_YAML.format(raw=raw))
    args = [
        "--config-dir",
        str(tmp_path / "conf"),
        "dataset=tiny",
        "dataset.min_count=2",
        f"data_dir={tmp_path / 'cache'}",
        "overwrite=true",
    ]
    assert main(args) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-2] == f"prepared tiny at {tmp_path / 'cache' / 'tiny-m2'}"
    assert out[-1] == (
        f"train with: mtlrec train --config-dir {tmp_path / 'conf'} dataset=tiny "
        f"dataset.min_count=2 data_dir={tmp_path / 'cache'}"
    )


def test_train_hint_quotes_for_the_shell_and_drops_prepare_only_keys():
    hint = train_hint(
        "census", None, ["dataset=census", "dataset.raw_dir=/my data", "overwrite=true"]
    )
    assert hint == "mtlrec train dataset=census 'dataset.raw_dir=/my data'"
    assert (
        train_hint("x", "c", ["+dataset=x", "hydra.verbose=true"])
        == "mtlrec train --config-dir c dataset=x"
    )
