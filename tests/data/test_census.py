"""census: label derivation, removed columns, both split protocols, task groups, and the MMoE
figure of the issue on the shared UCI test file (skipped when ../shared/data is absent)."""

from __future__ import annotations

import gzip

import numpy as np
import pytest

from helpers.datagen import SHARED_DATA, prepare, train
from mtlrec.data.sources.census import COLUMNS
from mtlrec.data.spec import DatasetSpec
from mtlrec.errors import MtlrecError

EDUCATION = [
    "Children",
    "High school graduate",
    "Bachelors degree(BA AB BS)",
    "Some college but no degree",
    "Doctorate degree(PhD EdD)",
]
MARITAL = ["Never married", "Married-civilian spouse present", "Divorced"]


def census_rows(n: int, seed: int) -> tuple[list[str], dict[str, int]]:
    """UCI-format lines (", "-separated, 42 fields, ending in ".") and their label counts."""
    rng = np.random.default_rng(seed)
    lines, counts = [], {"income": 0, "marital": 0, "education": 0}
    for _ in range(n):
        values = {c: f"v{rng.integers(0, 3)}" for c in COLUMNS}
        for c in (
            "age",
            "wage_per_hour",
            "capital_gains",
            "capital_losses",
            "dividends_from_stocks",
            "num_persons_worked_for_employer",
            "weeks_worked_in_year",
        ):
            values[c] = str(int(rng.integers(0, 60)))
        values["instance_weight"] = f"{rng.uniform(500, 3000):.2f}"
        values["education"] = EDUCATION[rng.integers(0, len(EDUCATION))]
        values["marital_status"] = MARITAL[rng.integers(0, len(MARITAL))]
        rich = rng.random() < 0.2
        values["income_50k"] = "50000+." if rich else "- 50000."
        counts["income"] += rich
        counts["marital"] += values["marital_status"] == "Never married"
        counts["education"] += values["education"] in (
            "Bachelors degree(BA AB BS)",
            "Doctorate degree(PhD EdD)",
        )
        lines.append(", ".join(values[c] for c in COLUMNS))
    return lines, counts


@pytest.fixture
def raw(tmp_path):
    d = tmp_path / "raw"
    d.mkdir()
    train_lines, train_counts = census_rows(300, 1)
    test_lines, test_counts = census_rows(200, 2)
    with gzip.open(d / "census-income.data.gz", "wt") as f:
        f.write("\n".join(train_lines) + "\n")
    (d / "census-income.test").write_text("\n".join(test_lines) + "\n")
    return d, train_counts, test_counts


def _sum(spec_dir, split, column):
    import pyarrow.parquet as pq

    return int(
        pq.read_table(spec_dir / f"{split}.parquet", columns=[column]).column(0).to_numpy().sum()
    )


def test_paper_protocol_with_both_files_and_labels_removed_from_inputs(raw, tmp_path):
    d, train_counts, test_counts = raw
    result = prepare([f"data_dir={tmp_path}", "dataset=census", f"dataset.raw_dir={d}"])
    spec = DatasetSpec.load(result.path)
    assert result.path == tmp_path / "census-g1"
    assert spec.info["paper_protocol"] is True
    assert result.summary["train"].rows == 300
    assert result.summary["val"].rows + result.summary["test"].rows == 200
    assert 60 < result.summary["val"].rows < 140  # the test file split 1:1 at random
    names = [f.name for f in spec.features]
    assert (
        "instance_weight" not in names
        and "income_50k" not in names
        and "marital_status" not in names
    )
    assert "education" in names and len(spec.dense) == 7 and len(names) == 42 - 3
    assert [t.name for t in spec.tasks] == ["income", "marital"]
    assert _sum(result.path, "train", "income") == train_counts["income"]
    assert _sum(result.path, "train", "marital") == train_counts["marital"]
    assert (
        _sum(result.path, "val", "marital") + _sum(result.path, "test", "marital")
        == test_counts["marital"]
    )
    metrics = train(
        tmp_path / "run",
        [f"data_dir={tmp_path}", "dataset=census", "model=mmoe", "trainer.epochs=1"],
    )
    assert metrics["status"] == "completed" and "test/marital_auc" in metrics["metrics"]


def test_task_group_2_and_test_file_only(raw, tmp_path):
    d, _, test_counts = raw
    (d / "census-income.data.gz").unlink()
    result = prepare(
        [f"data_dir={tmp_path}", "dataset=census", f"dataset.raw_dir={d}", "dataset.task_group=2"]
    )
    spec = DatasetSpec.load(result.path)
    assert result.path == tmp_path / "census-g2"
    assert spec.info["paper_protocol"] is False
    assert spec.info["protocol"].startswith(
        "NOT the paper protocol: only census-income.test present, seeded 60/20/20"
    )
    assert sum(result.summary[s].rows for s in ("train", "val", "test")) == 200
    assert [t.name for t in spec.tasks] == ["education", "marital"]
    names = [f.name for f in spec.features]
    assert "education" not in names and "marital_status" not in names and "income_50k" in names
    total = sum(_sum(result.path, s, "education") for s in ("train", "val", "test"))
    assert total == test_counts["education"]


def test_missing_test_file_and_bad_task_group(tmp_path):
    with pytest.raises(MtlrecError) as e:
        prepare([f"data_dir={tmp_path}", "dataset=census", f"dataset.raw_dir={tmp_path}"])
    assert str(e.value).startswith(
        f"{tmp_path / 'census-income.test'}[.gz]: census test file not found"
    )
    with pytest.raises(
        MtlrecError, match=r"dataset.task_group must be 1 \(income \+ marital\) or 2"
    ):
        prepare([f"data_dir={tmp_path}", "dataset=census", "dataset.task_group=3"])


CENSUS = SHARED_DATA / "census-income-kdd"


@pytest.mark.skipif(
    not (CENSUS / "census-income.test.gz").is_file(), reason="no ../shared/data/census-income-kdd"
)
def test_mmoe_on_the_uci_test_file_reaches_the_issue_figures(tmp_path):
    result = prepare([f"data_dir={tmp_path}", "dataset=census", f"dataset.raw_dir={CENSUS}"])
    rows = {s: result.summary[s].rows for s in ("train", "val", "test")}
    assert sum(rows.values()) == 99_762
    assert abs(rows["train"] - 0.6 * 99_762) < 500
    income = sum(result.summary[s].positives["income"] for s in rows)
    marital = sum(result.summary[s].positives["marital"] for s in rows)
    assert (income, marital) == (6_186, 43_143)  # the counts UCI / SOURCE.md give
    # seed 7: nn.Linear's draw gives its marital tower 8 positive output weights, which trapped it
    # at marital AUC 0.972 before the preset's model.tower_output_init=balanced (0.9937 with it)
    metrics = train(
        tmp_path / "run",
        [f"data_dir={tmp_path}", "experiment=census_mmoe", "trainer.epochs=5", "seed=7"],
    )
    m = metrics["metrics"]
    assert m["test/income_auc"] >= 0.93 and m["test/marital_auc"] >= 0.99, m
