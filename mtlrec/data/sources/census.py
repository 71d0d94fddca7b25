"""`census`: UCI Census-Income (KDD), as used by the MMoE paper (Ma et al., KDD 2018, Sec. 6.3).

    mtlrec prepare dataset=census dataset.raw_dir=~/data/census-income-kdd
    mtlrec train model=mmoe dataset=census

Raw files (UCI, no header, 42 fields separated by ", ", each record ends with "."):
`census-income.data` (199,523 rows) and `census-income.test` (99,762 rows), optionally gzipped.

Tasks (dataset.task_group):
    1: income  = [income field == "50000+."]          marital = [marital status == "Never married"]
    2: education = [education in dataset.education_positive]  + marital as above

The label source columns of the chosen group are removed from the inputs, and the instance
weight (UCI: "should not be used in the classifiers") is never a feature. The 7 continuous
columns are dense features, everything else sparse.

Splits: with both files, the paper's protocol (train on census-income.data, split the test file
1:1 at random into val/test); with the test file only, a seeded 60/20/20 random split of it,
recorded in spec.info["protocol"] as not the paper's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mtlrec.data.sources import register
from mtlrec.data.sources.base import DatasetSource, RawFilesConfig
from mtlrec.data.spec import TaskSpec
from mtlrec.errors import MtlrecError

# pyarrow and the prepare pipeline are imported where they are used: the registry imports every
# source to know its Config, and a run that only reads a prepared dataset needs neither.
if TYPE_CHECKING:
    import pyarrow as pa

    from mtlrec.data.prepare import Plan, RawSource, Result

COLUMNS = (
    "age",
    "class_of_worker",
    "industry_code",
    "occupation_code",
    "education",
    "wage_per_hour",
    "enrolled_in_edu_inst_last_wk",
    "marital_status",
    "major_industry_code",
    "major_occupation_code",
    "race",
    "hispanic_origin",
    "sex",
    "member_of_a_labor_union",
    "reason_for_unemployment",
    "full_or_part_time_employment_stat",
    "capital_gains",
    "capital_losses",
    "dividends_from_stocks",
    "tax_filer_status",
    "region_of_previous_residence",
    "state_of_previous_residence",
    "detailed_household_and_family_stat",
    "detailed_household_summary_in_household",
    "instance_weight",
    "migration_code_change_in_msa",
    "migration_code_change_in_reg",
    "migration_code_move_within_reg",
    "live_in_this_house_1_year_ago",
    "migration_prev_res_in_sunbelt",
    "num_persons_worked_for_employer",
    "family_members_under_18",
    "country_of_birth_father",
    "country_of_birth_mother",
    "country_of_birth_self",
    "citizenship",
    "own_business_or_self_employed",
    "fill_inc_questionnaire_for_veterans_admin",
    "veterans_benefits",
    "weeks_worked_in_year",
    "year",
    "income_50k",
)
INSTANCE_WEIGHT = "instance_weight"
# task name -> raw column its label is derived from
LABEL_SOURCES = {"income": "income_50k", "marital": "marital_status", "education": "education"}
TASK_GROUPS = {1: ("income", "marital"), 2: ("education", "marital")}


@dataclass
class CensusConfig(RawFilesConfig):
    task_group: int = 1  # 1: income + marital; 2: education + marital
    train_file: str = "census-income.data"
    test_file: str = "census-income.test"
    split: dict[str, Any] | None = None  # seed, fractions (test file only)
    dense: list[str] = field(default_factory=list)
    exclude: list[str] = field(default_factory=list)
    education_positive: list[str] = field(default_factory=list)

    def validate(self) -> None:
        super().validate()
        if self.task_group not in (1, 2):
            raise MtlrecError(
                f"dataset.task_group must be 1 (income + marital) or 2 (education + marital), got {self.task_group!r}"
            )


def find_raw(raw_dir: Path, name: str) -> Path | None:
    """raw_dir/name, or raw_dir/name.gz; None when neither exists."""
    for candidate in (raw_dir / name, raw_dir / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def make_transform(tasks: tuple[str, ...], education_positive: set[str], keep: list[str]):
    """Raw string block -> trimmed feature columns + 0/1 label columns."""
    import pyarrow as pa
    import pyarrow.compute as pc

    positive_education = pa.array(sorted(education_positive), pa.string())

    def transform(table: pa.Table) -> pa.Table:
        cols = {c: pc.utf8_trim_whitespace(table.column(c)) for c in table.column_names}
        out = {c: cols[c] for c in keep}
        for task in tasks:
            src = cols[LABEL_SOURCES[task]]
            if task == "income":
                hit = pc.equal(pc.utf8_rtrim(src, characters="."), "50000+")
            elif task == "marital":
                hit = pc.equal(src, "Never married")
            else:
                hit = pc.is_in(src, value_set=positive_education)
            out[task] = pc.cast(pc.fill_null(hit, False), pa.int8()).cast(pa.string())
        return pa.table(out)

    return transform


def census_sources(cfg: CensusConfig) -> tuple[list[RawSource], str, bool]:
    """(raw sources, protocol description, whether it is the paper's protocol)."""
    from mtlrec.data.prepare import RawSource, check_fractions

    raw_dir = cfg.raw_dir or Path(".")
    train_path = find_raw(raw_dir, cfg.train_file)
    test_path = find_raw(raw_dir, cfg.test_file)
    split = dict(cfg.split or {})
    if test_path is None:
        raise MtlrecError(
            f"{raw_dir / cfg.test_file}[.gz]: census test file not found; download it from UCI (see docs/datasets.md) or set dataset.raw_dir"
        )
    if train_path is not None:
        sources = [
            RawSource(train_path, split="train"),
            RawSource(test_path, fractions={"val": 0.5, "test": 0.5}),
        ]
        return (
            sources,
            "paper: train on census-income.data, test file split 1:1 into val/test",
            True,
        )
    fractions = check_fractions(
        "dataset.split.fractions",
        split.get("fractions") or {"train": 0.6, "val": 0.2, "test": 0.2},
    )
    share = "/".join(f"{round(v * 100)}" for v in fractions.values())
    protocol = (
        f"NOT the paper protocol: only {test_path.name} present, seeded {share} random split of it"
    )
    return [RawSource(test_path, fractions=fractions)], protocol, False


def build_plan(cfg: CensusConfig) -> Plan:
    from mtlrec.data.prepare import Plan, ReadOptions, set_dense_options

    group = cfg.task_group
    if group not in TASK_GROUPS:
        raise MtlrecError(
            f"dataset.task_group must be 1 (income + marital) or 2 (education + marital), got {group!r}"
        )
    tasks = TASK_GROUPS[group]
    sources, protocol, paper = census_sources(cfg)
    dense = list(cfg.dense)
    removed = {LABEL_SOURCES[t] for t in tasks} | {INSTANCE_WEIGHT}
    removed |= set(cfg.exclude)
    unknown = sorted(set(dense) - set(COLUMNS))
    if unknown:
        raise MtlrecError(
            f"dataset.dense: {unknown} are not census columns; valid: {list(COLUMNS)}"
        )
    clash = sorted(set(dense) & removed)
    if clash:
        raise MtlrecError(
            f"dataset.dense lists {clash}, which are label sources or excluded for task group {group}; remove them"
        )
    sparse = [c for c in COLUMNS if c not in removed and c not in dense]
    weight = census_weight(cfg)
    education_positive = set(cfg.education_positive)
    if "education" in tasks and not education_positive:
        raise MtlrecError(
            "dataset.education_positive must list the education values that count as 'at least college'"
        )
    plan = Plan(
        name=cfg.name or "census",
        path=cfg.path or Path("."),
        sources=sources,
        read=ReadOptions(
            format="csv",
            delimiter=",",
            header=False,
            column_names=COLUMNS,
            block_size_mb=cfg.block_size_mb,
        ),
        sparse=sparse,
        dense=dense,
        targets=[TaskSpec(t, t, "binary") for t in tasks],
        min_count=cfg.min_count,
        split_by="random",
        split_seed=int(dict(cfg.split or {}).get("seed", 0)),
        raw_columns=[
            c
            for c in COLUMNS
            if c not in (removed - {LABEL_SOURCES[t] for t in tasks}) or c == weight
        ],
        transform=make_transform(
            tasks, education_positive, sparse + dense + ([weight] if weight else [])
        ),
        info={
            "preparer": "census",
            "source": "UCI Census-Income (KDD)",
            "task_group": group,
            "protocol": protocol,
            "paper_protocol": paper,
            "education_positive": sorted(education_positive),
        },
        sample_weight=weight,
    )
    set_dense_options(plan, cfg.as_mapping())
    return plan


def census_weight(cfg: CensusConfig) -> str | None:
    """dataset.sample_weight: only the survey's instance_weight (the rows' population weights,
    never a feature) can weigh census rows."""
    weight = cfg.sample_weight
    if weight is not None and weight != INSTANCE_WEIGHT:
        raise MtlrecError(
            f"dataset.sample_weight={weight!r}: census rows can be weighted by '{INSTANCE_WEIGHT}' only (the survey's population weight)"
        )
    return weight


def prepare(cfg: CensusConfig, out_dir: Path) -> Result:
    from mtlrec.data.prepare import run_plan

    return run_plan(build_plan(cfg), out_dir)


@register
class Census(DatasetSource):
    name = "census"
    Config = CensusConfig
    preparable = True
    keeps_sample_weight = True  # instance_weight

    def prepare(self, cfg, out_dir):
        return prepare(cfg, out_dir)
