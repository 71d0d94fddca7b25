"""The dataset-source registry: every conf/dataset yaml validates through its source's typed
Config, a wrong key or type is one line, and a new source is picked up from its own module."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import pytest
import yaml

from helpers.datagen import REPO
from mtlrec.data import sources
from mtlrec.data.prepare import compose_prepare
from mtlrec.data.sources import (
    SOURCES,
    DatasetConfig,
    DatasetSource,
    prepare_dataset,
    register,
    resolve_dataset_dir,
    source_for,
    validate_dataset_config,
)
from mtlrec.data.spec import DatasetSpec, FeatureSpec, TaskSpec
from mtlrec.errors import MtlrecError

DATASET_YAMLS = sorted(p.stem for p in (REPO / "conf" / "dataset").glob("*.yaml"))
STREAMING_KEYS = {"streaming", "shuffle_buffer", "prefetch", "read_rows"}  # their own group now


@pytest.mark.parametrize("name", sorted(SOURCES))
def test_every_source_has_a_typed_config_and_a_way_to_build(name):
    cls = SOURCES[name]
    assert cls.name == name
    assert dataclasses.is_dataclass(cls.Config) and issubclass(cls.Config, DatasetConfig)
    assert not {f.name for f in dataclasses.fields(cls.Config)} & STREAMING_KEYS
    assert cls.generated or cls.preparable or name == "prepared"


@pytest.mark.parametrize("name", DATASET_YAMLS)
def test_every_shipped_dataset_yaml_validates_with_its_source(name):
    cfg = compose_prepare([f"dataset={name}", "dataset.path=/tmp/x"])["dataset"]
    typed = validate_dataset_config(cfg)
    assert isinstance(typed, source_for(cfg).Config)
    assert source_for(cfg).name == (cfg.get("preparer") or name)
    # No dataset yaml carries streaming settings: they live in conf/streaming/ once.
    assert not set(cfg) & STREAMING_KEYS


@pytest.mark.parametrize(
    ("override", "line"),
    [
        ("dataset.num_rows=abc", "dataset.num_rows='abc': expected an integer"),
        ("dataset.generator_seed=1.5", "dataset.generator_seed=1.5: expected an integer"),
        ("dataset.num_rows=10", "dataset.num_rows must be >= 100, got 10"),
        (
            "+dataset.funnel_violations=skip",
            "dataset.funnel_violations='skip': expected one of error, drop",
        ),
    ],
)
def test_wrong_types_and_values_are_one_line(override, line):
    cfg = compose_prepare(["dataset=synthetic_ccp", override])["dataset"]
    with pytest.raises(MtlrecError) as e:
        validate_dataset_config(cfg)
    assert str(e.value) == line


def test_a_misspelt_key_in_a_dataset_yaml_says_did_you_mean(tmp_path):
    conf = tmp_path / "conf" / "dataset"
    conf.mkdir(parents=True)
    text = (REPO / "conf" / "dataset" / "census.yaml").read_text()
    (conf / "mycensus.yaml").write_text(
        text.replace("dense_transform: standardize", "dense_transfrom: standardize")
    )
    cfg = compose_prepare(["dataset=mycensus"], str(tmp_path / "conf"))["dataset"]
    with pytest.raises(MtlrecError) as e:
        validate_dataset_config(cfg)
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith(
        "dataset.dense_transfrom is not a key of dataset (did you mean dataset.dense_transform?)"
    )
    # prepare refuses before reading anything
    with pytest.raises(MtlrecError) as e2:
        prepare_dataset(cfg)
    assert str(e2.value) == msg


def test_which_source_a_config_uses():
    assert source_for({"name": "census"}).name == "census"
    assert source_for({"name": "events", "preparer": "csv"}).name == "csv"
    assert source_for({"name": "census", "preparer": "csv"}).name == "csv"  # preparer wins
    assert source_for({"name": "my_dir", "path": "/x"}).name == "prepared"
    with pytest.raises(MtlrecError) as e:
        source_for({"name": "x", "preparer": "cvs"})
    assert str(e.value).startswith("dataset 'x': dataset.preparer is 'cvs'; use one of [")


@pytest.fixture
def throwaway_source():
    """A dataset source defined here, registered in-process: no other file names it."""

    @dataclass
    class TinyConfig(DatasetConfig):
        num_rows: int = 8

    @register
    class Tiny(DatasetSource):
        name = "tiny_throwaway"
        Config = TinyConfig
        generated = True
        preparable = True

        def generate(self, config):  # the typed Config: path a Path, num_rows an int
            path = config.path
            if not (path / "spec.json").is_file():
                path.mkdir(parents=True)
                self._write(path, config.num_rows)
            return path

        def prepare(self, config, out_dir):
            from mtlrec.data.prepare import Result, SplitSummary

            spec = self._write(out_dir, config.num_rows)
            return Result(out_dir, spec, {s: SplitSummary(rows=1) for s in spec.splits}, {})

        @staticmethod
        def _write(path, n):
            import pandas as pd

            spec = DatasetSpec(
                "tiny_throwaway",
                (FeatureSpec("x", "dense"),),
                ("y",),
                (TaskSpec("t", "y"),),
                splits={s: f"{s}.parquet" for s in ("train", "val", "test")},
            )
            for s in spec.splits:
                pd.DataFrame({"x": [0.5] * n, "y": [0, 1] * (n // 2)}).to_parquet(
                    path / f"{s}.parquet"
                )
            spec.save(path)
            return spec

    yield Tiny
    del sources.SOURCES["tiny_throwaway"]


def test_a_new_source_is_resolved_and_prepared_from_the_registry(throwaway_source, tmp_path):
    cfg = {"name": "tiny_throwaway", "path": str(tmp_path / "gen"), "num_rows": 4}
    assert validate_dataset_config(cfg) == throwaway_source.Config(
        name="tiny_throwaway", path=tmp_path / "gen", num_rows=4
    )
    path = resolve_dataset_dir(cfg)
    assert path == tmp_path / "gen" and DatasetSpec.load(path).name == "tiny_throwaway"
    with pytest.raises(MtlrecError) as e:
        resolve_dataset_dir({**cfg, "num_rows": "four"})
    assert str(e.value) == "dataset.num_rows='four': expected an integer"
    result = prepare_dataset({**cfg, "path": str(tmp_path / "prep")})
    assert result.path == tmp_path / "prep" and (tmp_path / "prep" / "train.parquet").is_file()


def test_dataset_yamls_need_no_registry_edit():
    # Each shipped yaml names a registered source (by preparer or name), or is `prepared`.
    for name in DATASET_YAMLS:
        raw = yaml.safe_load((REPO / "conf" / "dataset" / f"{name}.yaml").read_text())
        assert (raw.get("preparer") or raw["name"]) in SOURCES


def test_preparing_a_generated_dataset_says_how_it_is_made():
    cfg = compose_prepare(["dataset=synthetic_ccp"])["dataset"]
    with pytest.raises(MtlrecError) as e:
        prepare_dataset(cfg)
    assert str(e.value) == (
        "dataset 'synthetic_ccp' is generated on first use: `mtlrec train dataset=synthetic_ccp` makes it; there is nothing to prepare"
    )


def test_a_misspelt_key_is_one_line_and_exit_1_through_the_cli(tmp_path):
    import os
    import subprocess
    import sys

    conf = tmp_path / "conf" / "dataset"
    conf.mkdir(parents=True)
    (conf / "mine.yaml").write_text(
        f"name: mine\npreparer: csv\npath: {tmp_path / 'out'}\nfiles: [a.csv]\nsparse: [u]\n"
        "targets: {ctr: {label: click}}\ndense_transfrom: none\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "mtlrec", "prepare", "--config-dir", str(tmp_path / "conf")]
    out = subprocess.run(
        [*cmd, "dataset=mine"], capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL
    )
    assert out.returncode == 1
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        "mtlrec prepare: error: dataset.dense_transfrom is not a key of dataset "
        "(did you mean dataset.dense_transform?)"
    ), out.stderr
    assert not (tmp_path / "out").exists()


def test_the_registry_imports_no_prepare_pipeline_pyarrow_or_pandas():
    """Every source is imported to know its Config (a run that reads a prepared dataset, the
    settings check): a source imports the heavy parts where it prepares, not at module level."""
    import subprocess
    import sys

    heavy = ("pandas", "pyarrow", "mtlrec.data.prepare", "torch")
    code = (
        "import sys, mtlrec.data.sources as s; "
        f"print(sorted(s.SOURCES), [m for m in {heavy!r} if m in sys.modules])"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip().endswith(" []"), out
    assert "'census'" in out and "'synthetic_ccp'" in out and "'csv'" in out


def test_reading_prepared_data_imports_no_pandas():
    """pandas is for preparing (movielens' reader, text time columns): the modules a run reads
    prepared data with leave it unimported (start-up time of every `mtlrec train`)."""
    import subprocess
    import sys

    code = (
        "import sys, mtlrec.data.loader, mtlrec.data.streaming, mtlrec.data.sources; "
        "print('pandas' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("name", ["synthetic_ccp", "mmoe_synthetic"])
def test_a_generated_dataset_with_no_path_is_one_line(name):
    with pytest.raises(MtlrecError) as e:
        resolve_dataset_dir({"name": name, "path": None})
    assert str(e.value) == f"dataset '{name}': dataset.path (where to generate it) is not set"
