"""bench.py's data: the census and synthetic_ccp workloads as one prepared mtlrec dataset
plus the same rows as arrays.npz + meta.json for the systems that are not mtlrec.

Run in a child process of bench.py (generation memory never counts against a measured system).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from bench_common import ROOT

CENSUS_FILE = (
    Path(os.environ.get("MTLREC_CENSUS_DIR", ROOT.parent / "shared" / "data" / "census-income-kdd"))
    / "census-income.test.gz"
)

# Census columns (UCI order). Labels: 41 (income) and 7 (marital status); 24 is the sampling
# weight, which UCI says must not be used as a feature.
CENSUS_NUMERIC = {0: "age", 5: "wage_per_hour", 16: "capital_gains", 17: "capital_losses",
                  18: "dividends", 30: "num_emp", 39: "weeks_worked"}  # fmt: skip
CENSUS_LOG1P = {5, 16, 17, 18}
CENSUS_SKIP = {7, 24, 41}


def _write_arrays(out: Path, splits: dict, meta: dict) -> None:
    np.savez(out / "arrays.npz", **{f"{s}_{k}": v for s, d in splits.items() for k, v in d.items()})
    (out / "meta.json").write_text(json.dumps(meta, indent=1))


def _arrays_from_prepared(prepared: Path) -> tuple[dict, dict]:
    """A prepared mtlrec dataset's splits as numpy arrays (per-field ids, dense, labels) + meta."""
    import pyarrow.parquet as pq

    from mtlrec.data.spec import DatasetSpec

    spec = DatasetSpec.load(prepared)
    arrays = {}
    for s, fname in spec.splits.items():
        t = pq.read_table(prepared / fname)
        arrays[s] = {
            "sparse": np.stack([t[f.name].to_numpy() for f in spec.sparse], 1).astype(np.int64),
            "dense": np.stack([t[f.name].to_numpy() for f in spec.dense], 1).astype(np.float32),
            "labels": np.stack([t[c].to_numpy() for c in spec.labels], 1).astype(np.float32),
        }
    meta = {
        "sparse": [f.name for f in spec.sparse],
        "vocabs": [f.vocab_size for f in spec.sparse],
        "dense": [f.name for f in spec.dense],
        "labels": list(spec.labels),
    }
    return arrays, meta


def census_tag() -> str:
    import mtlrec.cli

    return "census-prepared" if "prepare" in mtlrec.cli.COMMANDS else "census-simple"


def prepare_census(out: Path) -> None:
    """The census workload: `mtlrec prepare dataset=census` when this mtlrec has it (issue 3),
    else the simple loader below; either way one prepared dir for mtlrec + arrays for the rest."""
    import mtlrec.cli

    if "prepare" not in mtlrec.cli.COMMANDS:
        return prepare_census_simple(out)
    env = dict(os.environ, MTLREC_DATA_DIR=str(out / "mtlrec-prepare"))
    cmd = [sys.executable, "-m", "mtlrec", "prepare", "dataset=census",
           f"dataset.raw_dir={CENSUS_FILE.parent}"]  # fmt: skip
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
    prepared = out / "mtlrec-prepare" / "census-g1"
    arrays, meta = _arrays_from_prepared(prepared)
    li = {c: i for i, c in enumerate(meta["labels"])}
    meta |= {
        "workload": "census",
        "source": "mtlrec prepare dataset=census (train-only vocabularies, 60/20/20 split, seed 0)",
        "auc": [["income", li["income"], None], ["marital", li["marital"], None]],
        "mtlrec_overrides": ["dataset=census", f"dataset.path={prepared}"],
    }
    _write_arrays(out, arrays, meta)


def prepare_census_simple(out: Path) -> None:
    """census-income.test.gz -> prepared mtlrec dataset (out/prepared) + out/arrays.npz."""
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    from mtlrec.data.spec import DatasetSpec, FeatureSpec, TaskSpec

    raw = pd.read_csv(
        CENSUS_FILE, header=None, sep=",", skipinitialspace=True, dtype=str, keep_default_na=False
    )
    n = len(raw)
    labels = np.stack(
        [
            (raw[41].str.strip() == "50000+.").to_numpy(np.float32),
            (raw[7].str.strip() == "Never married").to_numpy(np.float32),
        ],
        axis=1,
    )
    sparse_cols = [c for c in range(42) if c not in CENSUS_NUMERIC and c not in CENSUS_SKIP]
    sparse, vocabs = np.empty((n, len(sparse_cols)), np.int64), []
    for j, c in enumerate(sparse_cols):
        codes, uniques = pd.factorize(raw[c].str.strip())
        sparse[:, j], _ = codes, vocabs.append(len(uniques))
    dense = np.stack(
        [
            np.log1p(raw[c].astype(np.float64)) if c in CENSUS_LOG1P else raw[c].astype(np.float64)
            for c in CENSUS_NUMERIC
        ],
        axis=1,
    )
    order = np.random.default_rng(0).permutation(n)
    cut1, cut2 = int(0.6 * n), int(0.8 * n)
    parts = {"train": order[:cut1], "val": order[cut1:cut2], "test": order[cut2:]}
    mean, std = dense[parts["train"]].mean(0), dense[parts["train"]].std(0) + 1e-12
    dense = ((dense - mean) / std).astype(np.float32)

    sparse_names = [f"c{c}" for c in sparse_cols]
    dense_names = list(CENSUS_NUMERIC.values())
    label_names = ["income", "marital"]
    prepared = out / "prepared"
    prepared.mkdir(parents=True, exist_ok=True)
    spec = DatasetSpec(
        name="census_bench",
        features=tuple(
            FeatureSpec(nm, "sparse", v) for nm, v in zip(sparse_names, vocabs, strict=True)
        )
        + tuple(FeatureSpec(nm, "dense") for nm in dense_names),
        labels=tuple(label_names),
        tasks=(TaskSpec("income", "income"), TaskSpec("marital", "marital")),
        splits={s: f"{s}.parquet" for s in parts},
    )
    arrays = {}
    for s, rows in parts.items():
        cols = {nm: sparse[rows, j].astype(np.int32) for j, nm in enumerate(sparse_names)}
        cols |= {nm: dense[rows, j] for j, nm in enumerate(dense_names)}
        cols |= {nm: labels[rows, j] for j, nm in enumerate(label_names)}
        pq.write_table(pa.table(cols), prepared / f"{s}.parquet")
        arrays[s] = {"sparse": sparse[rows], "dense": dense[rows], "labels": labels[rows]}
    spec.save(prepared)
    meta = {
        "workload": "census",
        "source": "scripts/bench.py's own loader (ids over the whole file, 60/20/20 split, seed 0)",
        "sparse": sparse_names,
        "vocabs": vocabs,
        "dense": dense_names,
        "labels": label_names,
        # AUC targets: (name, label column, sample-space column or None)
        "auc": [["income", 0, None], ["marital", 1, None]],
        "mtlrec_overrides": ["dataset=prepared", f"dataset.path={prepared}"],
    }
    _write_arrays(out, arrays, meta)


def prepare_synthetic(out: Path, rows: int) -> None:
    """mtlrec's synthetic_ccp generator (in this process) -> out/prepared + out/arrays.npz."""
    from mtlrec.data.sources.synthetic_ccp import ensure_prepared

    prepared = ensure_prepared(out / "prepared", rows, 0)
    arrays, meta = _arrays_from_prepared(prepared)
    li = {c: i for i, c in enumerate(meta["labels"])}
    meta |= {
        "workload": "synthetic_ccp",
        "source": f"mtlrec's synthetic_ccp generator, {rows} rows, seed 0 (70/15/15)",
        "auc": [["ctr", li["click"], None], ["ctcvr", li["conversion"], None]],
        "funnel": [li["click"], li["conversion"]],
        "mtlrec_overrides": [
            "dataset=synthetic_ccp",
            f"dataset.num_rows={rows}",
            "dataset.generator_seed=0",
            f"dataset.path={prepared}",
        ],
    }
    _write_arrays(out, arrays, meta)
