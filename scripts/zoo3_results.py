"""Model zoo III on census-income and on the default click -> conversion data (docs/results.md §8).

Every new model (pepnet, stem, adatt, dbmtl, dselect_k, dcmt) next to MMoE, measured in the same
run: test AUCs (mean ± std over seeds), parameter counts and training samples/s (as a ratio to
MMoE's, since the machine is shared and absolute timings are noisy). Every run is a plain
`mtlrec train` with one torch thread, one after the other; the script prints each command.

    MTLREC_DATA_DIR=.bench/data python scripts/zoo3_results.py --census-raw /path/to/census-income-kdd
    python scripts/zoo3_results.py --datasets synthetic_ccp --seeds 1 --epochs-ccp 1   # a quick look

census: task group 1 (income, never married), the preparer's 60/20/20 split of the test file,
`model.embedding_dim=4 model.tower_dims=[8]` as in §2, up to `--epochs-census` epochs with the best
epoch on val/mean_auc. dcmt needs a click -> conversion funnel and does not apply to census.
synthetic_ccp: `--num-rows` impressions, default model sizes, best epoch on each model's own
val/loss (as §5: never on a counterfactual label).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

MODELS = ["mmoe", "pepnet", "stem", "adatt", "dbmtl", "dselect_k", "dcmt"]
FUNNEL_ONLY = {"dcmt"}
METRICS = {
    "census": ("test/income_auc", "test/marital_auc"),
    "synthetic_ccp": ("test/ctr_auc", "test/cvr_auc", "test/cvr_auc_entire", "test/ctcvr_auc"),
}


def command(model: str, dataset: str, seed: int, args: argparse.Namespace, run_dir: Path):
    base = [sys.executable, "-m", "mtlrec", "train", f"model={model}", f"dataset={dataset}"]
    if dataset == "census":
        extra = [
            "model.embedding_dim=4",
            "model.tower_dims=[8]",
            f"trainer.epochs={args.epochs_census}",
            "trainer.batch_size=1024",
        ]
    else:
        extra = [
            f"dataset.num_rows={args.num_rows}",
            f"trainer.epochs={args.epochs_ccp}",
            "trainer.monitor=val/loss",
            "trainer.mode=min",
            "trainer.patience=null",
        ]
    return [
        *base,
        *extra,
        f"seed={seed}",
        "trainer.num_threads=1",
        "device=cpu",
        f"hydra.run.dir={run_dir}",
    ]


def prepare_census(raw: Path, env: dict[str, str]) -> None:
    cmd = [sys.executable, "-m", "mtlrec", "prepare", "dataset=census", f"dataset.raw_dir={raw}"]
    print(" ".join(cmd[1:]), flush=True)
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode != 0 and "already" not in done.stderr:
        sys.exit(f"prepare failed:\n{done.stderr[-2000:]}")


def cell(values: list[float]) -> str:
    """mean ± sample std (ddof 1, as `mtlrec compare --group-by-seed`)."""
    if not values:
        return "-"
    std = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
    return f"{np.mean(values):.4f} ± {std:.4f}"


def table(dataset: str, runs: dict[str, list[dict]]) -> list[str]:
    metrics = METRICS[dataset]
    base_speed = np.mean([r["train_samples_per_s"] for r in runs.get("mmoe", [])] or [np.nan])
    lines = [
        "| model | " + " | ".join(f"`{m}`" for m in metrics) + " | params | train samples/s "
        "| vs mmoe | n |",
        "| --- |" + " ---: |" * len(metrics) + " ---: | ---: | ---: | --- |",
    ]
    for name, rs in runs.items():
        cells = [
            cell([r["metrics"][k] for r in rs if r["metrics"].get(k) is not None]) for k in metrics
        ]
        speed = float(np.mean([r["train_samples_per_s"] for r in rs]))
        lines.append(
            f"| {name} | " + " | ".join(cells) + f" | {rs[0]['num_parameters']:,} | "
            f"{speed:,.0f} | {speed / base_speed:.2f} | {len(rs)} |"
        )
    return lines


def collect(args: argparse.Namespace) -> None:
    """The tables from the completed run dirs under --out (e.g. after an interrupted study)."""
    for dataset in args.datasets:
        runs: dict[str, list[dict]] = {}
        for name in args.models:
            for seed in args.seeds:
                path = args.out / dataset / f"{name}-{seed}" / "metrics.json"
                record = json.loads(path.read_text()) if path.is_file() else {}
                if record.get("status") == "completed":
                    runs.setdefault(name, []).append(record)
        if runs:
            print(f"\n{dataset}, seeds {args.seeds}; runs in {args.out / dataset}\n")
            print("\n".join(table(dataset, runs)))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--datasets", nargs="+", default=list(METRICS), choices=list(METRICS))
    parser.add_argument("--models", nargs="+", default=MODELS, choices=MODELS)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--num-rows", type=int, default=100_000)
    parser.add_argument("--epochs-census", type=int, default=5)
    parser.add_argument("--epochs-ccp", type=int, default=3)
    parser.add_argument("--census-raw", type=Path, default=None, help="the raw UCI files' dir")
    parser.add_argument("--out", type=Path, default=None, help="run dirs (default: a temp dir)")
    parser.add_argument(
        "--collect", action="store_true", help="only tabulate the finished runs under --out"
    )
    args = parser.parse_args()
    if args.collect:
        collect(args)
        return
    out = args.out or Path(tempfile.mkdtemp(prefix="zoo3-"))
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": "1"}
    if "census" in args.datasets and args.census_raw is not None:
        prepare_census(args.census_raw, env)
    results: dict[str, dict[str, list[dict]]] = {}
    for dataset in args.datasets:
        for name in args.models:
            if dataset == "census" and name in FUNNEL_ONLY:
                continue
            for seed in args.seeds:
                run_dir = out / dataset / f"{name}-{seed}"
                cmd = command(name, dataset, seed, args, run_dir)
                print(" ".join(cmd[1:]), flush=True)
                start = time.perf_counter()
                done = subprocess.run(cmd, capture_output=True, text=True, env=env)
                if done.returncode != 0:
                    sys.exit(f"{' '.join(cmd)} failed:\n{done.stderr[-2000:]}")
                record = json.loads((run_dir / "metrics.json").read_text())
                results.setdefault(dataset, {}).setdefault(name, []).append(record)
                print(
                    f"  {time.perf_counter() - start:.0f} s, best epoch {record.get('best_epoch')}",
                    flush=True,
                )
    for dataset, runs in results.items():
        print(f"\n{dataset}, seeds {args.seeds}; runs in {out / dataset}\n")
        print("\n".join(table(dataset, runs)))


if __name__ == "__main__":
    main()
