"""`aliccp`: Ali-CCP, Alibaba's click + conversion dataset of the ESMM paper (Tianchi dataset 408).

    mtlrec prepare dataset=aliccp dataset.raw_dir=~/data/ali-ccp                     # processed CSVs
    mtlrec prepare dataset=aliccp dataset.source=raw dataset.raw_dir=~/data/ali-ccp-raw dataset.min_count=10
    mtlrec train model=esmm dataset=aliccp

Two input forms (`dataset.source`):

processed: one CSV per split with a header, the form torch-rechub distributes: `click`,
    `purchase`, 23 sparse fields named by their Ali-CCP field id (101, 121, ..., 150_14) and 8
    dense `D<field>` columns.
raw: the original release. `sample_skeleton_{train,test}.csv` lines are
        sample_id,click,conversion,common_feature_index,num_features,feature_list
    and `common_features_{train,test}.csv` lines are
        common_feature_index,num_features,feature_list
    where feature_list is entries separated by \\x01 (ASCII 1), each entry
    field_id \\x02 feature_id \\x03 value (ASCII 2 and 3). A sample's features are its own entries
    plus those of its common_feature_index (user-side features shared by many samples).
    `convert_raw` turns a skeleton + common-features pair into the processed form: per field the
    feature_id of its first entry (sparse; "" when the sample has none) and, for the 8 dense
    fields, that entry's value. Fields listed in `dataset.bags` (the multi-valued ones, e.g.
    210 and the 14-day histories 109_14, 110_14, 127_14, 150_14) keep ALL their entries instead,
    as a weighted bag `feature:value|feature:value|...` (at most `dataset.bag_max_len` values,
    pooled by their weights), and get no D column. Rows with conversion=1 but click=0 break the funnel ESMM models (a
    purchase needs a click): with `funnel_violations: drop` (conf/dataset/aliccp.yaml's default)
    they are dropped and counted in spec.info, with `error` they stop the prepare in one line, the
    same rule as for the processed CSVs. The train release becomes the
    train split; the test release is split 1:1 at random (seeded) into val and test.

Tasks: ctr = click over all impressions; cvr = purchase over clicked impressions; the funnel
click -> purchase lets ESMM train pCTCVR = pCTR x pCVR on all impressions.
"""

from __future__ import annotations

import csv
import gzip
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from mtlrec.data import funnel
from mtlrec.data.sources import register
from mtlrec.data.sources.base import DatasetSource, RawFilesConfig
from mtlrec.data.spec import FunnelSpec, TaskSpec
from mtlrec.errors import MtlrecError

# The prepare pipeline is imported where it is used: the registry imports every source to know
# its Config, and a run that only reads a prepared dataset does not need it.
if TYPE_CHECKING:
    from mtlrec.data.prepare import Plan, Result

SPARSE_FIELDS = (
    "101", "121", "122", "124", "125", "126", "127", "128", "129", "205", "206", "207", "210",
    "216", "508", "509", "702", "853", "301", "109_14", "110_14", "127_14", "150_14",
)  # fmt: skip
DENSE_FIELDS = ("109_14", "110_14", "127_14", "150_14", "508", "509", "702", "853")
DENSE_COLUMNS = tuple(f"D{f}" for f in DENSE_FIELDS)
LABELS = ("click", "purchase")
log = logging.getLogger(__name__)
ENTRY_SEP, FIELD_SEP, VALUE_SEP = "\x01", "\x02", "\x03"


@dataclass
class AliccpConfig(RawFilesConfig):
    source: Literal["processed", "raw"] = "processed"
    files: dict[str, str] | None = None  # processed: split -> CSV
    raw_files: dict[str, str] | None = None  # raw: train/test skeleton + common features
    test_val_fraction: float = 0.5
    split_seed: int = 0
    dense_transform: str = "none"  # checked per column by prepare (one line naming the column)
    bags: list[str] | None = None  # source=raw: multi-valued fields kept whole, as weighted bags
    bag_max_len: int = 50

    def validate(self) -> None:
        super().validate()
        if self.bag_max_len < 1:
            raise MtlrecError(f"dataset.bag_max_len must be >= 1, got {self.bag_max_len}")
        if not 0 < self.test_val_fraction < 1:
            raise MtlrecError(
                f"dataset.test_val_fraction must be in (0, 1), got {self.test_val_fraction}"
            )


def _open(path: Path):
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    return opener(path, "rt", encoding="utf-8", newline="")


def parse_entries(
    text: str, path: Path, line: int, bags: frozenset[str] = frozenset()
) -> dict[str, Any]:
    """feature_list -> {field_id: (feature_id, value)} of the fields mtlrec uses (first entry
    wins); a field of `bags` maps to the list of all its (feature_id, value) entries."""
    out: dict[str, Any] = {}
    if not text:
        return out
    for entry in text.split(ENTRY_SEP):
        try:
            field, rest = entry.split(FIELD_SEP)
            feature, value = rest.split(VALUE_SEP)
        except ValueError:
            raise MtlrecError(
                f"{path}: line {line}: malformed feature entry {entry[:40]!r}; expected field\\x02feature\\x03value"
            ) from None
        if field in bags:
            out.setdefault(field, []).append((feature, value))
        elif field in SPARSE_FIELDS and field not in out:
            out[field] = (feature, value)
    return out


def _serialize(entries: dict[str, Any]) -> str:
    items = []
    for k, v in entries.items():
        for feature, value in v if isinstance(v, list) else [v]:
            items.append(f"{k}{FIELD_SEP}{feature}{VALUE_SEP}{value}")
    return ENTRY_SEP.join(items)


def columns(bags: frozenset[str]) -> tuple[list[str], list[str], list[str]]:
    """(single-id fields, bag fields, D columns) of the converted CSV."""
    sparse = [f for f in SPARSE_FIELDS if f not in bags]
    return (
        sparse,
        [f for f in SPARSE_FIELDS if f in bags],
        [f"D{f}" for f in DENSE_FIELDS if f not in bags],
    )


def read_common(path: Path, bags: frozenset[str] = frozenset()) -> dict[str, str]:
    """common_feature_index -> its feature list, kept only for the used fields (as text: compact)."""
    common: dict[str, str] = {}
    with _open(path) as f:
        for number, line in enumerate(f, start=1):
            parts = line.rstrip("\r\n").split(",", 2)
            if len(parts) != 3:
                raise MtlrecError(
                    f"{path}: line {number}: malformed row, expected 3 comma-separated fields (index,num_features,feature_list), got {len(parts)}"
                )
            common[parts[0]] = _serialize(parse_entries(parts[2], path, number, bags))
    if not common:
        raise MtlrecError(f"{path}: the common-features file has no rows")
    return common


def convert_raw(
    skeleton: Path,
    common_path: Path,
    out_csv: Path,
    funnel_violations: str = "drop",
    bags: Sequence[str] = (),
) -> dict[str, int]:
    """One skeleton + common-features pair -> a processed-format CSV. Returns row counts.

    Rows with conversion=1 but click=0 are dropped and counted (`funnel_violations="drop"`), or,
    with "error", make it fail with one line counting them (mtlrec.data.funnel, as everywhere).
    """
    bag_set = frozenset(bags)
    common = read_common(common_path, bag_set)
    sparse, bag_fields, dense_cols = columns(bag_set)
    dense_fields = [c[1:] for c in dense_cols]
    counts = {"rows": 0, "dropped_conversion_without_click": 0}
    with _open(skeleton) as f, open(out_csv, "w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow([*LABELS, *sparse, *bag_fields, *dense_cols])
        for number, line in enumerate(f, start=1):
            parts = line.rstrip("\r\n").split(",", 5)
            if len(parts) != 6:
                raise MtlrecError(
                    f"{skeleton}: line {number}: malformed row, expected 6 comma-separated fields (sample_id,click,conversion,common_feature_index,num_features,feature_list), got {len(parts)}"
                )
            _, click, conversion, index, _, features = parts
            if click not in ("0", "1") or conversion not in ("0", "1"):
                raise MtlrecError(
                    f"{skeleton}: line {number}: click/conversion must be 0 or 1, got {click!r}/{conversion!r}"
                )
            if index not in common:
                raise MtlrecError(
                    f"{skeleton}: line {number}: common_feature_index {index!r} is not in {common_path.name}"
                )
            if conversion == "1" and click == "0":
                counts["dropped_conversion_without_click"] += 1
                continue
            entries = parse_entries(common[index], common_path, 0, bag_set)
            entries.update(parse_entries(features, skeleton, number, bag_set))
            writer.writerow(
                [
                    click,
                    conversion,
                    *(entries[k][0] if k in entries else "" for k in sparse),
                    *("|".join(f"{i}:{v}" for i, v in entries.get(k, [])) for k in bag_fields),
                    *(entries[k][1] if k in entries else "" for k in dense_fields),
                ]
            )
            counts["rows"] += 1
    bad = counts["dropped_conversion_without_click"]
    if funnel_violations == "error":
        funnel.raise_violations(str(skeleton), {("click", "conversion"): bad}, counts["rows"] + bad)
    elif bad:
        log.warning("%s: dropped %d rows with conversion=1 but click=0", skeleton, bad)
    if counts["rows"] == 0:
        raise MtlrecError(f"{skeleton}: the skeleton file has no usable rows")
    return counts


def bag_fields_of(cfg: AliccpConfig, source: str) -> frozenset[str]:
    """dataset.bags, checked: Ali-CCP fields, raw source only."""
    bags = frozenset(cfg.bags or ())
    unknown = sorted(bags - set(SPARSE_FIELDS))
    if unknown:
        raise MtlrecError(
            f"dataset.bags: {unknown} are not Ali-CCP fields; use some of {list(SPARSE_FIELDS)}"
        )
    if bags and source != "raw":
        raise MtlrecError(
            "dataset.bags needs dataset.source=raw (the processed CSVs hold one value per field)"
        )
    return bags


def build_plan(cfg: AliccpConfig, out_dir: Path) -> Plan:
    from mtlrec.data.prepare import Plan, RawSource, ReadOptions, raw_file, set_dense_options
    from mtlrec.data.prepare.config import funnel_policy
    from mtlrec.data.prepare.plan import MultiField

    raw_dir = cfg.raw_dir or Path(".")
    source = cfg.source
    seed = cfg.split_seed
    policy = funnel_policy(cfg.as_mapping())
    info: dict[str, Any] = {"preparer": "aliccp", "source": f"Ali-CCP ({source} form)"}
    source_names = None
    bags = bag_fields_of(cfg, source)
    sparse, bag_fields, dense_cols = columns(bags)
    if source == "processed":
        files = dict(cfg.files or {})
        missing = [s for s in ("train", "val", "test") if not files.get(s)]
        if missing:
            raise MtlrecError(f"dataset.files must name the {missing} file(s) of Ali-CCP")
        sources = [
            RawSource(raw_file(raw_dir, str(files[s]), f"dataset.files.{s}"), split=s)
            for s in ("train", "val", "test")
        ]
    elif source == "raw":
        names = dict(cfg.raw_files or {})
        paths = {
            k: raw_file(raw_dir, str(names.get(k)), f"dataset.raw_files.{k}")
            for k in ("train_skeleton", "train_common", "test_skeleton", "test_common")
        }
        # The converted CSVs live in the staging dir: gone once the prepared data is published.
        converted = out_dir / "_converted"
        converted.mkdir()
        for part in ("train", "test"):
            counts = convert_raw(
                paths[f"{part}_skeleton"],
                paths[f"{part}_common"],
                converted / f"{part}.csv",
                funnel_violations=policy,
                bags=sorted(bags),
            )
            info[f"raw_{part}"] = counts
        val_share = cfg.test_val_fraction
        source_names = [
            f"{paths['train_skeleton']} + {paths['train_common']}",
            f"{paths['test_skeleton']} + {paths['test_common']}",
        ]
        sources = [
            RawSource(converted / "train.csv", split="train"),
            RawSource(
                converted / "test.csv", fractions={"val": val_share, "test": 1.0 - val_share}
            ),
        ]
    else:
        raise MtlrecError(f"dataset.source '{source}' is unknown; use processed or raw")
    plan = Plan(
        name=cfg.name or "aliccp",
        path=cfg.path or Path("."),
        sources=sources,
        read=ReadOptions(format="csv", block_size_mb=cfg.block_size_mb),
        sparse=sparse,
        dense=dense_cols,
        targets=[
            TaskSpec("ctr", "click", "binary"),
            TaskSpec("cvr", "purchase", "binary", where="click"),
        ],
        funnel=FunnelSpec("click", "purchase"),
        min_count=cfg.min_count,
        split_by="files",
        split_seed=seed,
        funnel_violations=policy,
        info=info,
        source_names=source_names,
    )
    max_len = cfg.bag_max_len
    plan.multi = [MultiField(b, "bag", max_len=max_len, weighted=True) for b in bag_fields]
    set_dense_options(plan, cfg.as_mapping())
    return plan


def prepare(cfg: AliccpConfig, out_dir: Path) -> Result:
    from mtlrec.data.prepare import run_plan

    plan = build_plan(cfg, out_dir)
    try:
        return run_plan(plan, out_dir)
    finally:
        converted = out_dir / "_converted"
        if converted.exists():
            import shutil

            shutil.rmtree(converted)


@register
class Aliccp(DatasetSource):
    name = "aliccp"
    Config = AliccpConfig
    preparable = True

    def prepare(self, cfg, out_dir):
        return prepare(cfg, out_dir)
