"""Run the model-zoo and balancing studies of docs/results.md and print their tables.

    python scripts/run_studies.py                       # all three studies, into outputs/studies/
    python scripts/run_studies.py --study balance       # one of: mmoe_synthetic, census, balance
    python scripts/run_studies.py --tables-only         # re-read finished runs, print the tables
    python scripts/run_studies.py --study mmoe_synthetic --out outputs/studies_50k dataset.num_rows=50000
                                                        # extra overrides go to every sweep

Each study is one or more `mtlrec train -m experiment=...` sweeps (one thread per run, one run at a
time: this is a 2-core machine) followed by `mtlrec compare` over its runs (mean +- std over seeds).
The MMoE synthetic study runs each model as its own sweep so that its sizes can be
parameter-matched: 8 experts of [16] for omoe/mmoe vs one bottom of [128] for shared_bottom.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

COMMON = ["trainer.num_threads=1", "device=cpu", "trainer.progress=false"]

STUDIES: dict[str, dict] = {
    "mmoe_synthetic": {
        "sweeps": {
            "shared_bottom": [
                "experiment=mmoe_synthetic_study",
                "model=shared_bottom",
                "model.bottom_dims=[128]",
            ],
            "omoe": [
                "experiment=mmoe_synthetic_study",
                "model=omoe",
                "model.num_experts=8",
                "model.expert_dims=[16]",
            ],
            "mmoe": [
                "experiment=mmoe_synthetic_study",
                "model=mmoe",
                "model.num_experts=8",
                "model.expert_dims=[16]",
            ],
        },
        "compare": [
            "--metric",
            "test/task1_mse",
            "--metric",
            "test/task2_mse",
            "--metric",
            "test/mean_mse",
            "--sort",
            "model",
            "--group-by-seed",
        ],
    },
    "census": {
        "sweeps": {"all": ["experiment=census_models"]},
        "compare": [
            "--metric",
            "test/income_auc",
            "--metric",
            "test/marital_auc",
            "--sort",
            "model",
            "--group-by-seed",
        ],
    },
    "balance": {
        "sweeps": {"all": ["experiment=balance_study"]},
        "compare": [
            "--metric",
            "test/ctr_auc",
            "--metric",
            "test/cvr_auc",
            "--metric",
            "test/cvr_auc_entire",
            "--metric",
            "test/mean_auc",
            "--sort",
            "balance",
            "--group-by-seed",
        ],
    },
}


def sh(cmd: list[str]) -> None:
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE"})


def prepare_census() -> None:
    raw = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "census-income-kdd"
    sh(["mtlrec", "prepare", "dataset=census", f"dataset.raw_dir={raw}"])


def weights_table(root: Path) -> str:
    """Task weights of the last epoch (history.csv) per balancing method, mean over seeds."""
    import pandas as pd
    import yaml

    rows = []
    for hist in sorted(root.glob("*/*/history.csv")):
        cfg = yaml.safe_load((hist.parent / ".hydra" / "config.yaml").read_text())
        last = pd.read_csv(hist).iloc[-1]
        row = {"balance": cfg["balance"]["name"], "seed": cfg["seed"], "epochs": int(last["epoch"])}
        for col in last.index:
            if col.startswith(("weight/", "log_var/", "pcgrad/", "train/extra_loss")):
                row[col] = float(last[col])
        rows.append(row)
    df = pd.DataFrame(rows).drop(columns="seed").groupby("balance", sort=True).mean()
    lines = [
        "| balance | " + " | ".join(df.columns) + " |",
        "| --- |" + " ---: |" * len(df.columns),
    ]
    for method, r in df.iterrows():
        cells = ["" if pd.isna(v) else f"{v:.4f}" for v in r]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def gate_table(root: Path) -> str:
    """MMoE's two task gates at the last epoch: total variation distance between them and each
    task's gate entropy, mean +- std over seeds per correlation (history.csv gate/ columns)."""
    import pandas as pd
    import yaml

    rows = []
    for hist in sorted(root.glob("mmoe/*/history.csv")):
        cfg = yaml.safe_load((hist.parent / ".hydra" / "config.yaml").read_text())
        last = pd.read_csv(hist).iloc[-1]
        g1 = last.filter(regex=r"^gate/task1/expert_").to_numpy(dtype=float)
        g2 = last.filter(regex=r"^gate/task2/expert_").to_numpy(dtype=float)
        rows.append(
            {
                "correlation": cfg["dataset"]["correlation"],
                "tv_distance": 0.5 * abs(g1 - g2).sum(),
                "entropy_task1": float(last["gate/entropy/task1"]),
                "entropy_task2": float(last["gate/entropy/task2"]),
            }
        )
    df = pd.DataFrame(rows).groupby("correlation")
    mean, std = df.mean(), df.std()
    lines = ["| correlation | " + " | ".join(mean.columns) + " |", "| --- |" + " ---: |" * 3]
    for p, r in mean.iterrows():
        cells = [f"{r[c]:.3f} ± {std.loc[p, c]:.3f}" for c in mean.columns]
        lines.append(f"| {p} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--study", choices=[*STUDIES, "all"], default="all")
    ap.add_argument("--out", default="outputs/studies")
    ap.add_argument("--tables-only", action="store_true")
    ap.add_argument("overrides", nargs="*", help="extra Hydra overrides for every sweep")
    args = ap.parse_args(argv)
    names = list(STUDIES) if args.study == "all" else [args.study]
    for name in names:
        study, root = STUDIES[name], Path(args.out) / name
        if not args.tables_only:
            if name == "census":
                prepare_census()
            for part, overrides in study["sweeps"].items():
                sh(
                    [
                        "mtlrec",
                        "train",
                        "-m",
                        *overrides,
                        *COMMON,
                        *args.overrides,
                        f"hydra.sweep.dir={root / part}",
                    ]
                )
        table = root / "table.md"
        sh(
            [
                "mtlrec",
                "compare",
                str(root),
                "--format",
                "markdown",
                "--output",
                str(table),
                *study["compare"],
            ]
        )
        print(table.read_text())
        if name == "mmoe_synthetic":
            gates = gate_table(root)
            (root / "gates.md").write_text(gates + "\n")
            print(gates)
        if name == "balance":
            weights = weights_table(root)
            (root / "weights.md").write_text(weights + "\n")
            print(weights)
    return 0


if __name__ == "__main__":
    sys.exit(main())
