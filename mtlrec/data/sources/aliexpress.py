"""`aliexpress`: the AliExpress search-log multi-task data (Tianchi dataset 74690), per country.

    mtlrec prepare dataset=aliexpress dataset.raw_dir=~/data/AliExpress_US
    mtlrec train model=mmoe dataset=aliexpress

Format (one CSV per split, with a header): `search_id`, `categorical_1..16` (integer ids),
`numerical_1..63` (already scaled to [0, 1] upstream), labels `click` and `conversion`.
Conversion is only possible after a click, so the tasks are ctr = click over all impressions and
cvr = conversion over clicked impressions, with the click -> conversion funnel for ESMM.
`search_id` is not a feature. The release has no validation file: `dataset.val_fraction` of the
train file's rows (seeded) become the val split.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from mtlrec.data.sources import register
from mtlrec.data.sources.base import DatasetSource, ReadConfig
from mtlrec.data.spec import FunnelSpec, TaskSpec
from mtlrec.errors import MtlrecError

# The prepare pipeline is imported where it is used: the registry imports every source to know
# its Config, and a run that only reads a prepared dataset does not need it.
if TYPE_CHECKING:
    from mtlrec.data.prepare import Plan, Result

NUM_CATEGORICAL = 16
NUM_NUMERICAL = 63


@dataclass
class AliexpressConfig(ReadConfig):
    files: dict[str, str] | None = None  # train, test (and optionally val)
    val_fraction: float = 0.1  # with no val file: this share of the train file becomes val
    split_seed: int = 0
    dense_transform: str = "none"  # checked per column by prepare (one line naming the column)


def build_plan(cfg: AliexpressConfig) -> Plan:
    from mtlrec.data.prepare import Plan, RawSource, raw_file, read_options, set_dense_options
    from mtlrec.data.prepare.config import funnel_policy

    raw_dir = cfg.raw_dir or Path(".")
    files = dict(cfg.files or {})
    if "train" not in files or "test" not in files:
        raise MtlrecError("dataset.files must name the train and test files of AliExpress")
    val_fraction = cfg.val_fraction
    train = raw_file(raw_dir, str(files["train"]), "dataset.files.train")
    sources = []
    if files.get("val"):
        sources += [
            RawSource(train, split="train"),
            RawSource(raw_file(raw_dir, str(files["val"]), "dataset.files.val"), split="val"),
        ]
    else:
        if not 0 < val_fraction < 1:
            raise MtlrecError(
                f"dataset.val_fraction must be in (0, 1) when there is no val file, got {val_fraction}"
            )
        sources.append(
            RawSource(train, fractions={"train": 1.0 - val_fraction, "val": val_fraction})
        )
    sources.append(
        RawSource(raw_file(raw_dir, str(files["test"]), "dataset.files.test"), split="test")
    )
    plan = Plan(
        name=cfg.name or "aliexpress",
        path=cfg.path or Path("."),
        sources=sources,
        read=read_options(cfg.as_mapping()),
        sparse=[f"categorical_{i}" for i in range(1, NUM_CATEGORICAL + 1)],
        dense=[f"numerical_{i}" for i in range(1, NUM_NUMERICAL + 1)],
        targets=[
            TaskSpec("ctr", "click", "binary"),
            TaskSpec("cvr", "conversion", "binary", where="click"),
        ],
        funnel=FunnelSpec("click", "conversion"),
        min_count=cfg.min_count,
        split_by="files",
        split_seed=cfg.split_seed,
        funnel_violations=funnel_policy(cfg.as_mapping()),
        info={
            "preparer": "aliexpress",
            "source": "AliExpress (Tianchi 74690)",
            "val": "val file" if files.get("val") else f"{val_fraction:g} of the train file",
        },
    )
    set_dense_options(plan, cfg.as_mapping())
    return plan


def prepare(cfg: AliexpressConfig, out_dir: Path) -> Result:
    from mtlrec.data.prepare import run_plan

    return run_plan(build_plan(cfg), out_dir)


@register
class Aliexpress(DatasetSource):
    name = "aliexpress"
    Config = AliexpressConfig
    preparable = True

    def prepare(self, cfg, out_dir):
        return prepare(cfg, out_dir)
